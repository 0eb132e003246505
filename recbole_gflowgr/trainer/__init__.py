"""The trainer layer: what every run's trainer carries on top of RecBole's (``base``: checkpoints, timing, amp,
``schedule``; ``resume``; ``numerics``; ``distributed``), and the result rows a run ends in (``results``)."""
