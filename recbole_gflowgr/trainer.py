"""Trainer pieces shared by every model run through this package (RecBole's trainers and ours)."""
import os
import time
import uuid

from recbole.trainer import Trainer

from recbole_gflowgr.compat import trusted_checkpoints
from recbole_gflowgr.numerics import NumericsMixin
from recbole_gflowgr.resume import ResumeMixin


class TrainerMixin(ResumeMixin, NumericsMixin):
    """Put in front of any RecBole trainer class:

    * RecBole 1.2.1 loads its own checkpoints with a bare ``torch.load``; under torch >= 2.6 that defaults to
      ``weights_only=True`` and fails on the pickled ``Config``. The two RecBole methods that load are wrapped.
    * Each training epoch's wall time is recorded (``epoch_times``) for the result row.
    * Checkpoint file names get a random suffix (RecBole's are only unique to the second).
    * Atomic checkpoints, a last checkpoint per epoch and ``--resume`` (``resume.py``); a clear error on a
      non-finite loss (``numerics.py``).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole names checkpoints <model>-<local time to the second>.pth: two runs started in the same second
        # (a grid with --jobs, tests) would overwrite each other's file
        stem, ext = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{stem}-{uuid.uuid4().hex[:6]}{ext}"

    def resume_checkpoint(self, resume_file):
        with trusted_checkpoints():
            return super().resume_checkpoint(resume_file)

    def evaluate(self, *args, **kwargs):
        with trusted_checkpoints():
            return super().evaluate(*args, **kwargs)

    def _train_epoch(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super()._train_epoch(*args, **kwargs)
        finally:
            self.epoch_times = getattr(self, "epoch_times", []) + [time.perf_counter() - start]

    def mean_epoch_time(self):
        times = getattr(self, "epoch_times", [])
        return round(sum(times) / len(times), 3) if times else None


_WITH_MIXIN = {}


def with_mixin(mixin, trainer_class):
    """``trainer_class`` with ``mixin`` in front (one cached subclass per pair; the class itself if it already
    has the mixin)."""
    if issubclass(trainer_class, mixin):
        return trainer_class
    if (mixin, trainer_class) not in _WITH_MIXIN:
        _WITH_MIXIN[mixin, trainer_class] = type(trainer_class.__name__, (mixin, trainer_class), {})
    return _WITH_MIXIN[mixin, trainer_class]


def with_checkpoint_fix(trainer_class):
    """``trainer_class`` with :class:`TrainerMixin` in front."""
    return with_mixin(TrainerMixin, trainer_class)


class GRTrainer(TrainerMixin, Trainer):
    """Base trainer of the generative models (SFT); fine-tuning methods subclass it."""
