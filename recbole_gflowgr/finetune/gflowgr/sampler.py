"""Adaptive trajectory sampler of GFlowGR (arXiv 2506.16114, §3.1): which unobserved items to augment with.

For every training example, ``n_aug`` unobserved items are drawn as augmented trajectories. A collaborative
model scores every item for the user (higher = more plausible). The adaptive sampler follows a curriculum from
easy negatives (low score) to hard ones (plausible but unobserved):

1. Rank the user's *allowed* items (not in ``exclude``) by score ascending: rank ``r = 0 .. n_b - 1`` (``n_b`` =
   number of allowed items of user ``b``); the score-rank quantile of rank ``r`` is about ``r / n_b``.
2. The curriculum position ``c(p)`` at progress ``p`` in ``[0, 1]`` (fraction of fine-tuning done) moves from
   ``start`` to ``end``: ``linear``: ``c = start + (end - start) * p``; ``cosine``:
   ``c = start + (end - start) * (1 - cos(pi * p)) / 2``.
3. The window is the quantile interval ``[lo, lo + window]`` with ``lo = min(c, 1 - window)`` (kept inside
   ``[0, 1]``); in ranks: ``floor(lo * n_b) <= r < ceil((lo + window) * n_b)``. If that holds fewer than
   ``n_aug`` ranks, it is widened around its centre (and shifted to stay in ``[0, n_b)``) to exactly ``n_aug``
   ranks, i.e. it falls back to the nearest allowed items.
4. An item is in the window when it is allowed and its score lies between the scores at the window's first and
   last rank (inclusive), so ties at the edges are all in (never broken by item index); ``n_aug`` distinct
   items are drawn uniformly from the window.

``mode="random"`` draws ``n_aug`` distinct items uniformly from all allowed items (the "w/o Ada" ablation).
``n_aug = 0`` returns a ``(B, 0)`` tensor (the "w/o Traj" ablation). Excluded items (the positive, the user's
history, the padding item 0: the caller sets them) are never returned. Everything is vectorised over users
(one sort of ``(B, n_items)`` in adaptive mode) and deterministic given a ``torch.Generator``.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

from recbole_gflowgr.foundation.errors import ConfigError

__all__ = ["AdaptiveSampler", "SamplerConfigError"]

MODES = ("adaptive", "random")
SCHEDULES = ("linear", "cosine")


class SamplerConfigError(ConfigError, ValueError):
    """A sampler argument (config key ``gflowgr_*``) has an impossible value; a ``ValueError`` too."""


def _unit(key: str, value, low_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SamplerConfigError(f"{key} must be a number, got {value!r}") from None
    ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise SamplerConfigError(f"{key} must be in {interval}, got {value!r}")
    return v


class AdaptiveSampler:
    """Curriculum sampler of augmented trajectories (GFlowGR §3.1).

    Args:
        n_aug: number of augmented items per example (``gflowgr_n_aug``), ``>= 0``.
        mode: ``"adaptive"`` (curriculum) or ``"random"`` (uniform; ``gflowgr_sampler``).
        start: quantile where the window starts at progress 0 (``gflowgr_curriculum_start``), in ``[0, 1]``.
        end: quantile where the window starts at progress 1 (``gflowgr_curriculum_end``), in ``[0, 1]``.
        window: width of the quantile window (``gflowgr_curriculum_window``), in ``(0, 1]``.
        schedule: ``"linear"`` or ``"cosine"`` (``gflowgr_curriculum_schedule``).
    """

    def __init__(self, n_aug: int, mode: str = "adaptive", start: float = 0.0, end: float = 0.9,
                 window: float = 0.1, schedule: str = "linear"):
        integral = isinstance(n_aug, numbers.Integral) or (isinstance(n_aug, float) and n_aug.is_integer())
        if isinstance(n_aug, bool) or not integral:
            raise SamplerConfigError(f"gflowgr_n_aug must be a non-negative integer, got {n_aug!r}")
        if n_aug < 0:
            raise SamplerConfigError(f"gflowgr_n_aug must be >= 0, got {n_aug!r}")
        if mode not in MODES:
            raise SamplerConfigError(f"gflowgr_sampler must be one of {MODES}, got {mode!r}")
        if schedule not in SCHEDULES:
            raise SamplerConfigError(f"gflowgr_curriculum_schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.n_aug = int(n_aug)
        self.mode = mode
        self.start = _unit("gflowgr_curriculum_start", start)
        self.end = _unit("gflowgr_curriculum_end", end)
        self.window = _unit("gflowgr_curriculum_window", window, low_open=True)
        self.schedule = schedule

    def __repr__(self) -> str:
        return (f"AdaptiveSampler(n_aug={self.n_aug}, mode={self.mode!r}, start={self.start}, end={self.end}, "
                f"window={self.window}, schedule={self.schedule!r})")

    @staticmethod
    def _progress(progress) -> float:
        p = float(progress)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"AdaptiveSampler.sample: progress must be in [0, 1], got {progress!r}")
        return p

    def centre(self, progress) -> float:
        """Curriculum position ``c(p)`` (the window's lower quantile before clamping)."""
        p = self._progress(progress)
        if self.schedule == "cosine":
            p = (1.0 - math.cos(math.pi * p)) / 2.0
        return self.start + (self.end - self.start) * p

    def window_bounds(self, progress) -> Tuple[float, float]:
        """Quantile window ``(lo, hi)`` used at ``progress`` (before widening for small users)."""
        lo = min(self.centre(progress), 1.0 - self.window)
        return lo, lo + self.window

    def sample(self, scores: torch.Tensor, exclude: torch.Tensor, progress,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``n_aug`` distinct allowed items per user.

        Args:
            scores: ``(B, n_items)`` collaborative-model scores (higher = more plausible); NaN counts as lowest.
            exclude: ``(B, n_items)`` bool, ``True`` = never return (positive, history, padding item 0).
            progress: fraction of fine-tuning done, in ``[0, 1]``.
            generator: optional ``torch.Generator`` on ``scores.device`` for reproducibility.

        Returns:
            ``(B, n_aug)`` LongTensor of item ids (column indices of ``scores``), distinct within a row.

        Raises:
            ValueError: bad shapes or progress, or a user with fewer than ``n_aug`` allowed items.
        """
        if scores.dim() != 2:
            raise ValueError(f"scores must have shape (B, n_items), got {tuple(scores.shape)}")
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude must have the shape of scores {tuple(scores.shape)}, got {tuple(exclude.shape)}")
        p = self._progress(progress)
        B, n_items = scores.shape
        device = scores.device
        if self.n_aug == 0:
            return torch.empty(B, 0, dtype=torch.long, device=device)
        exclude = exclude.to(device=device, dtype=torch.bool)
        allowed = ~exclude  # (B, n_items)
        n_allowed = allowed.sum(1)  # (B,)
        short = n_allowed < self.n_aug  # (B,)
        if bool(short.any()):
            b = int(short.nonzero()[0, 0])
            raise SamplerConfigError(
                f"gflowgr_n_aug = {self.n_aug} but user row {b} has only {int(n_allowed[b])} allowed items "
                f"(of {n_items}; the rest are excluded: positive, history, padding): lower gflowgr_n_aug")

        keys = torch.rand(B, n_items, generator=generator, device=device)  # (B, n_items) uniform in [0, 1)
        if self.mode == "adaptive":
            in_window = self._window_mask(scores, exclude, n_allowed, p)  # (B, n_items)
        else:
            in_window = allowed
        keys = keys.masked_fill(~in_window, -1.0)  # (B, n_items): outside the window never wins
        return keys.topk(self.n_aug, dim=1).indices  # (B, n_aug): uniform without replacement

    def _window_mask(self, scores: torch.Tensor, exclude: torch.Tensor, n_allowed: torch.Tensor,
                     p: float) -> torch.Tensor:
        """``(B, n_items)`` bool: allowed items whose score-rank lies in the (widened) curriculum window."""
        s = scores.detach()
        if s.dtype != torch.float64:
            s = s.float()
        big = torch.finfo(s.dtype).max
        s = torch.nan_to_num(s, nan=-big, posinf=big, neginf=-big)  # (B, n_items), finite
        lo, hi = self.window_bounds(p)
        n = n_allowed.to(torch.float64)  # (B,)
        first = torch.floor(lo * n).long()  # (B,) first rank in the window
        stop = torch.minimum(torch.ceil(hi * n).long(), n_allowed)  # (B,) one past the last rank
        first = torch.minimum(first, n_allowed - 1)
        k = (stop - first).clamp(min=1)  # (B,) ranks in the window
        m = torch.clamp(k, min=self.n_aug)  # (B,) widened to at least n_aug ranks
        begin = first - (m - k) // 2  # (B,) widen around the centre ...
        begin = torch.minimum(begin.clamp(min=0), n_allowed - m)  # ... shifted to stay inside [0, n_b)
        last = begin + m - 1  # (B,)
        # the allowed scores of ascending ranks begin and last, from a partial sort (topk) of the nearer end of
        # the ranking instead of a full sort of every row: the same values (ties included)
        below, above = int(last.max()) + 1, int((n_allowed - begin).max())  # ranks needed from each end
        if below <= above:
            ranked = s.masked_fill(exclude, math.inf).topk(below, dim=1, largest=False).values  # (B, below) ascending
            s_lo, s_hi = ranked.gather(1, begin.unsqueeze(1)), ranked.gather(1, last.unsqueeze(1))  # (B, 1) each
        else:  # ascending rank r of an allowed score = position n_allowed - 1 - r from the top
            ranked = s.masked_fill(exclude, -math.inf).topk(above, dim=1).values  # (B, above) descending
            s_lo = ranked.gather(1, (n_allowed - 1 - begin).unsqueeze(1))  # (B, 1)
            s_hi = ranked.gather(1, (n_allowed - 1 - last).unsqueeze(1))  # (B, 1)
        return ~exclude & (s >= s_lo) & (s <= s_hi)  # (B, n_items)
