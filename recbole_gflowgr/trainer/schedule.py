"""Learning-rate schedules (``lr_scheduler``, ``warmup_steps`` / ``warmup_ratio``, ``min_lr_ratio``; fine-tuning runs
read the ``finetune_`` versions of these keys), as a factor of each parameter group's own base lr per optimiser step.

* ``constant``: 1 (RecBole's behaviour); ``linear`` / ``cosine``: from 1 down to ``min_lr_ratio`` at the run's last
  step (``total`` = ``lr_decay_epochs`` (0: the run's epochs) x batches per epoch x optimiser steps per batch; a
  horizon shorter than the epoch bound lets early stopping end the run on the decayed lr); ``inverse_sqrt`` (T5 / TIGER):
  ``sqrt(warmup / step)`` after the warmup (``warmup`` 0: ``1 / sqrt(step)``, step counted from 1).
* Warmup: a linear ramp ``(step + 1) / warmup`` over the first ``warmup`` steps, for every schedule;
  ``warmup_ratio`` gives it as a fraction of ``total`` (give one of the two).

:func:`lr_factor` is a pure function of the step; :func:`attach` builds a ``torch`` ``LambdaLR`` on an optimiser
and steps it after every ``optimizer.step()`` (a step post hook: RecBole's loop and PPO/GRPO's extra updates alike).
"""
import math

import torch

from recbole_gflowgr.foundation.errors import ConfigError

# the keys of a plain (SFT, collaborative) run; a fine-tuning run reads FINETUNE_PREFIX + key
KEYS = ("lr_scheduler", "warmup_steps", "warmup_ratio", "min_lr_ratio", "lr_decay_epochs")
FINETUNE_PREFIX = "finetune_"
NEUTRAL = {"lr_scheduler": "constant", "warmup_steps": 0, "warmup_ratio": 0.0, "min_lr_ratio": 0.0, "lr_decay_epochs": 0}


def schedule_config(config, finetuning):
    """{key: value} of the run's schedule keys (the ``finetune_`` ones when ``finetuning``). Each key's type and
    range are checked at start-up by the schema (``properties/overall.yaml``, ``foundation/validation.py``); here
    only the rule between two keys: a one-line ConfigError naming them."""
    prefix = FINETUNE_PREFIX if finetuning else ""
    values = {}
    for key in KEYS:
        value = config[prefix + key]
        values[key] = NEUTRAL[key] if value is None else value
    steps, ratio = values["warmup_steps"], values["warmup_ratio"]
    if steps and ratio:
        raise ConfigError(f"{prefix}warmup_steps={steps} and {prefix}warmup_ratio={ratio} are both set; give one of them")
    return values


def warmup_of(values, total):
    """Warmup steps: ``warmup_steps``, or ``round(warmup_ratio * total)``."""
    return values["warmup_steps"] or int(round(values["warmup_ratio"] * (total or 0)))


def lr_factor(step, kind, warmup=0, total=None, min_ratio=0.0):
    """Factor of the base lr for the optimiser step that follows ``step`` steps already taken (0 = the first).
    ``total``: the run's number of steps (needed by linear / cosine; None = not known yet, no decay)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / (step + 1)) if warmup else 1.0 / math.sqrt(step + 1)
    if not total:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


class Schedule:
    """The schedule of one run: ``values`` from :func:`schedule_config`, ``total`` set by the trainer when ``fit``
    knows the number of batches (the lambda reads it at every step)."""

    def __init__(self, values):
        self.values, self.total = values, None

    @property
    def kind(self):
        return self.values["lr_scheduler"]

    def factor(self, step):
        return lr_factor(step, self.kind, warmup_of(self.values, self.total), self.total, self.values["min_lr_ratio"])

    def attach(self, optimizer):
        """A LambdaLR on ``optimizer`` (every group scaled from its own base lr), stepped after each
        ``optimizer.step()``; returns the scheduler."""
        def factor(step):  # a plain function: LambdaLR's state_dict then holds only the step counter
            return self.factor(step)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        optimizer.register_step_post_hook(lambda opt, args, kwargs: scheduler.step())
        return scheduler
