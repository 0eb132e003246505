"""Trainer pieces shared by every model run through this package (RecBole's trainers and ours)."""
import os
import time
import uuid

import torch
from recbole.trainer import Trainer

from recbole_gflowgr.foundation.compat import trusted_checkpoints
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.trainer.numerics import NumericsMixin
from recbole_gflowgr.trainer.resume import ResumeMixin
from recbole_gflowgr.trainer.schedule import Schedule, schedule_config


class TrainerMixin(ResumeMixin, NumericsMixin):
    """Put in front of any RecBole trainer class:

    * RecBole 1.2.1 loads its own checkpoints with a bare ``torch.load``; under torch >= 2.6 that defaults to
      ``weights_only=True`` and fails on the pickled ``Config``. The two RecBole methods that load are wrapped.
    * Each training epoch's wall time is recorded (``epoch_times``) for the result row.
    * Checkpoint file names get a random suffix (RecBole's are only unique to the second).
    * Atomic checkpoints, a last checkpoint per epoch and ``--resume`` (``resume.py``); a clear error on a
      non-finite loss (``numerics.py``).
    * Mixed precision: RecBole's ``enable_amp`` autocasts the training loss (``torch.autocast`` in its
      ``_train_epoch``) in the autocast dtype of the device; ours sets that dtype from ``amp_dtype`` for the epoch
      (bfloat16 by default; float16 needs RecBole's ``enable_scaler`` and a GPU). Evaluation stays in float32.
    * A learning-rate schedule (``schedule.py``: ``lr_scheduler``, warmup; fine-tuning runs read the ``finetune_``
      keys) on the optimiser that ``_build_optimizer`` returns (every param group from its own base lr, so also
      GFlowGR's log Z group), stepped per optimiser step; its state is in the last checkpoint. The lr is logged
      per epoch (log and tensorboard ``train/lr``).
    """
    optimizer_steps_per_batch = 1  # trainers that update several times per batch (PPO, GRPO) may say so: linear /
    # cosine schedules then end at the run's true last step (otherwise they reach min_lr_ratio early and stay there)

    def __init__(self, config, model):
        self.amp_dtype = amp_dtype(config)
        self.schedule = Schedule(schedule_config(config, finetuning(config)))
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

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        self.lr_scheduler = self.schedule.attach(optimizer)
        return optimizer

    def fit(self, train_data, *args, **kwargs):
        if self.resumable and hasattr(train_data, "__len__"):  # linear / cosine decay over lr_decay_epochs (or the run)
            epochs = min(self.schedule.values["lr_decay_epochs"] or self.epochs, self.epochs)
            self.schedule.total = epochs * len(train_data) * self.optimizer_steps_per_batch
        return super().fit(train_data, *args, **kwargs)

    def current_lr(self):
        return self.optimizer.param_groups[0]["lr"] if hasattr(self, "optimizer") else None

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start, lr = time.perf_counter(), self.current_lr()
        if lr is not None:
            self.logger.info(f"epoch {epoch_idx} lr: {lr:.3g} ({self.schedule.kind}, step {self.lr_scheduler.last_epoch})")
            self.tensorboard.add_scalar("train/lr", lr, epoch_idx)
        device_type = self.device.type
        before = torch.get_autocast_dtype(device_type)
        torch.set_autocast_dtype(device_type, self.amp_dtype)  # used by RecBole's autocast when enable_amp
        try:
            return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        finally:
            torch.set_autocast_dtype(device_type, before)
            self.epoch_times = getattr(self, "epoch_times", []) + [time.perf_counter() - start]

    def mean_epoch_time(self):
        times = getattr(self, "epoch_times", [])
        return round(sum(times) / len(times), 3) if times else None


def finetuning(config):
    """Whether the run fine-tunes a generative model (it reads the ``finetune_`` schedule keys)."""
    from recbole_gflowgr import OUR_MODELS

    return config["model"] in OUR_MODELS and (config["finetune"] or "sft") != "sft"


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype(config):
    """The autocast dtype of ``amp_dtype``; a clear error for an unknown name or float16 where it cannot work."""
    name = config["amp_dtype"] or "bfloat16"
    if name not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype={name!r} is not an autocast dtype: use bfloat16 or float16")
    if config["enable_amp"] and name == "float16":
        if torch.device(config["device"]).type != "cuda":
            raise ConfigError("amp_dtype=float16 is for GPUs: on CPU use amp_dtype=bfloat16 (or enable_amp=False)")
        if not config["enable_scaler"]:
            raise ConfigError("amp_dtype=float16 needs loss scaling: set enable_scaler=True (or use bfloat16)")
    return AMP_DTYPES[name]


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
