"""Trainer pieces shared by every model run through this package (RecBole's trainers and ours)."""
import contextlib
import glob
import os
import time
import uuid

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_gflowgr.foundation.compat import trusted_checkpoints
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.foundation.utils import atomic_file, atomic_save
from recbole_gflowgr.trainer import budget
from recbole_gflowgr.trainer.numerics import diverged
from recbole_gflowgr.trainer.resume import (LAST_SUFFIX, _generator, _reason, read_checkpoint, rng_states, run_id,
                                            set_rng_states)
from recbole_gflowgr.trainer.schedule import Schedule, schedule_config


class TrainerMixin:
    """Put in front of any RecBole trainer class:

    * RecBole 1.2.1 loads its own checkpoints with a bare ``torch.load``; under torch >= 2.6 that defaults to
      ``weights_only=True`` and fails on the pickled ``Config``. The two RecBole methods that load are wrapped.
    * Each training epoch's wall time is recorded (``epoch_times``) for the result row.
    * Checkpoint file names get a random suffix (RecBole's are only unique to the second).
    * Atomic checkpoints, a last checkpoint per epoch and ``--resume`` (``resume.py``: what is saved, when, and
      how it is read back); a clear error on a non-finite loss (``numerics.py``). Trainers that are not a RecBole
      ``Trainer`` (the decision-tree ones) pass through unchanged.

    * Mixed precision: RecBole's ``enable_amp`` autocasts the training loss (``torch.autocast`` in its
      ``_train_epoch``) in the autocast dtype of the device; ours sets that dtype from ``amp_dtype`` for the epoch
      (bfloat16 by default; float16 needs RecBole's ``enable_scaler`` and a GPU). Evaluation stays in float32.
    * A learning-rate schedule (``schedule.py``: ``lr_scheduler``, warmup; fine-tuning runs read the ``finetune_``
      keys) on the optimiser that ``_build_optimizer`` returns (every param group from its own base lr, so also
      GFlowGR's log Z group), stepped per optimiser step; its state is in the last checkpoint. The lr is logged
      per epoch (log and tensorboard ``train/lr``).
    * A wall-clock budget (``budget.py``: ``time_budget_s``), checked by the fit loop's callback after each
      validation; when it ends training, ``fit`` returns the best result so far as early stopping would.

    One class, one override per RecBole hook: at most 3 classes stand between RecBole's ``Trainer`` and any
    method's trainer (``tests/test_architecture.py``).
    """
    optimizer_steps_per_batch = 1  # trainers that update several times per batch (PPO, GRPO) may say so: linear /
    # cosine schedules then end at the run's true last step (otherwise they reach min_lr_ratio early and stay there)

    prior_elapsed_s = 0.0  # wall seconds of the earlier processes of a resumed run (set by resume_checkpoint)
    prior_elapsed_estimated = False
    best_epoch = None  # epochs trained (counted from 1) when the best valid score was reached

    def __init__(self, config, model):
        self.amp_dtype = amp_dtype(config)
        self.schedule = Schedule(schedule_config(config, finetuning(config)))
        self.time_budget_s = float(config["time_budget_s"] or 0)  # fine-tuning runs: finetune_time_budget_s
        self.budget_start, self.budget_ended, self.valid_times = budget.clock(), False, []  # run() sets budget_start
        super().__init__(config, model)
        # RecBole names checkpoints <model>-<local time to the second>.pth: two runs started in the same second
        # (a grid with --jobs, tests) would overwrite each other's file
        stem, ext = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{stem}-{uuid.uuid4().hex[:6]}{ext}"

    def evaluate(self, *args, **kwargs):
        with trusted_checkpoints():
            return super().evaluate(*args, **kwargs)

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        self.lr_scheduler = self.schedule.attach(optimizer)
        return optimizer

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if not self.resumable:
            return super().fit(train_data, valid_data, verbose, saved, show_progress)
        if hasattr(train_data, "__len__"):  # linear / cosine decay over lr_decay_epochs (or the run)
            epochs = min(self.schedule.values["lr_decay_epochs"] or self.epochs, self.epochs)
            self.schedule.total = epochs * len(train_data) * self.optimizer_steps_per_batch
        self._saving, self._train_loader, self._fit_start = saved, train_data, time.time()
        self.last_saved_epoch = self.start_epoch - 1
        pending = self.__dict__.pop("_pending_rng", None)
        if pending is not None:  # --resume: the streams continue where the interrupted run left them
            set_rng_states(pending["rng"])
            if pending["loader_rng"] is not None:
                train_data.generator.set_state(pending["loader_rng"].cpu())
        if getattr(self, "resumed_finished", False):
            self.logger.info("resume: training had ended; evaluating the best checkpoint")
            return self.best_valid_score, self.best_valid_result

        def end_of_epoch(epoch_idx, valid_score):
            self.record_validation(epoch_idx)
            if saved:
                self.save_last(epoch_idx)
            if callback_fn is not None:
                callback_fn(epoch_idx, valid_score)
            self.check_budget(epoch_idx)  # raises budget.BudgetSpent: RecBole's loop has no other way out

        try:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn=end_of_epoch)
        except budget.BudgetSpent:
            self._add_hparam_to_tensorboard(self.best_valid_score)  # what RecBole's fit does after its loop
            return self.best_valid_score, self.best_valid_result

    def check_budget(self, epoch):
        """After validation ``epoch`` (0-based): raise :class:`budget.BudgetSpent` when the next validation interval
        and the test evaluation would overrun ``time_budget_s`` (unless early stopping or the cap ends training
        here anyway). Every process of a multi-process run follows global rank 0's decision."""
        if not self.time_budget_s or epoch + 1 >= self.epochs or self.stopped_early:
            return
        left = self.epochs - epoch - 1
        stop = budget.overruns(budget.clock() - self.budget_start, budget.mean(getattr(self, "epoch_times", [])),
                               budget.mean(self.valid_times), min(self.eval_step, left), self.time_budget_s)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            decision = [stop]
            torch.distributed.broadcast_object_list(decision, src=0)
            stop = decision[0]
        if stop:
            self.budget_ended = True
            self.logger.info(f"time budget: {budget.clock() - self.budget_start:.0f} of {self.time_budget_s:.0f} s "
                             f"spent; the next epoch and the test evaluation would overrun it: training ends after "
                             f"epoch {epoch} (best checkpoint evaluated on test)")
            raise budget.BudgetSpent()

    def current_lr(self):
        return self.optimizer.param_groups[0]["lr"] if hasattr(self, "optimizer") else None

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start, lr = budget.clock(), self.current_lr()
        self.current_epoch = epoch_idx
        if lr is not None:
            self.logger.info(f"epoch {epoch_idx} lr: {lr:.3g} ({self.schedule.kind}, step {self.lr_scheduler.last_epoch})")
            self.tensorboard.add_scalar("train/lr", lr, epoch_idx)
        device_type = self.device.type
        before = torch.get_autocast_dtype(device_type)
        torch.set_autocast_dtype(device_type, self.amp_dtype)  # used by RecBole's autocast when enable_amp
        try:
            if self.resumable and getattr(self, "_saving", False) and self.last_saved_epoch < epoch_idx - 1:
                self.save_last(epoch_idx - 1)  # the previous epoch had no validation, so no callback
            return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        finally:
            torch.set_autocast_dtype(device_type, before)
            self.epoch_times = getattr(self, "epoch_times", []) + [budget.clock() - start]

    def _check_nan(self, loss):
        """RecBole's ``ValueError('Training loss is nan')`` as a :class:`TrainingError` (also for ``inf``)."""
        if not bool(torch.isfinite(loss).all()):
            raise diverged(self, f"training loss is {float(loss.detach())}", "")

    @property
    def stopped_early(self):
        """Whether early stopping ended training (False: the epoch bound or the time budget did, or no validation
        ran)."""
        return self.cur_step > self.stopping_step

    @property
    def stopped_by(self):
        """What ended training: "early_stopping", "epochs" (the cap) or "time_budget" (``budget.py``)."""
        return budget.stop_reason(self.budget_ended, self.stopped_early)

    def _valid_epoch(self, *args, **kwargs):
        start = budget.clock()
        score, result = super()._valid_epoch(*args, **kwargs)
        self.valid_times.append(budget.clock() - start)
        self._last_valid_result = result
        return score, result

    def record_validation(self, epoch):
        """After RecBole's early-stopping update of validation ``epoch`` (0-based): a ``valid_curve`` point
        {epoch (from 1), elapsed_s (wall seconds since the run's fit started, earlier processes included), ndcg@10}
        and ``best_epoch`` when it improved (RecBole resets ``cur_step`` to 0 then)."""
        result = getattr(self, "_last_valid_result", None) or {}
        ndcg = result.get("ndcg@10")
        self.valid_curve = getattr(self, "valid_curve", []) + [
            {"epoch": epoch + 1, "elapsed_s": round(self.prior_elapsed_s + time.time() - self._fit_start, 2),
             "ndcg@10": None if ndcg is None else round(float(ndcg), 6)}]
        if self.cur_step == 0:
            self.best_epoch = epoch + 1

    @property
    def resumable(self):
        return isinstance(self, Trainer)

    @property
    def last_checkpoint_file(self):
        if "_last_file" not in self.__dict__:
            self._last_file = os.path.join(self.config["checkpoint_dir"], run_id(self.config) + LAST_SUFFIX)
        return self._last_file

    def _rank0(self):
        return self.config["single_spec"] or self.config["local_rank"] == 0

    # ----- saving ----------------------------------------------------------------------------------------------
    def _save_checkpoint(self, epoch, *args, **kwargs):
        """RecBole's best checkpoint, written atomically."""
        if not self.resumable or not self._rank0():
            return super()._save_checkpoint(epoch, *args, **kwargs)
        verbose = kwargs.pop("verbose", args[0] if args else True)
        target = kwargs.pop("saved_model_file", self.saved_model_file)
        with atomic_file(target) as tmp:
            super()._save_checkpoint(epoch, verbose=False, saved_model_file=tmp, **kwargs)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {target}")

    def save_last(self, epoch):
        """This run's last checkpoint: RecBole's checkpoint keys plus ``resume`` (see the module docstring)."""
        if not self._rank0():
            return
        loader = getattr(self, "_train_loader", None)
        gen = _generator(self)
        sched = getattr(self, "lr_scheduler", None)
        state = {"config": self.config, "epoch": epoch, "cur_step": self.cur_step,
                 "best_valid_score": self.best_valid_score, "state_dict": self.model.state_dict(),
                 "other_parameter": self.model.other_parameter(), "optimizer": self.optimizer.state_dict(),
                 "resume": {"run_id": run_id(self.config), "best_valid_result": self.best_valid_result,
                            "best_file": self.saved_model_file, "epoch_times": list(getattr(self, "epoch_times", [])),
                            "valid_curve": list(getattr(self, "valid_curve", [])), "best_epoch": self.best_epoch,
                            "lr_scheduler": sched.state_dict() if sched is not None else None,
                            "elapsed_s": self.prior_elapsed_s + time.time() - self._fit_start,
                            "finished": epoch + 1 >= self.epochs or self.cur_step > self.stopping_step,
                            "rng": rng_states(), "generator": gen.get_state() if gen is not None else None,
                            "loader_rng": loader.generator.get_state() if loader is not None else None}}
        atomic_save(state, self.last_checkpoint_file, pickle_protocol=4)
        self.last_saved_epoch = epoch

    def discard_last(self):
        """Delete the last checkpoint (the run's result row is written: nothing left to resume)."""
        if self.resumable and self._rank0():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.last_checkpoint_file)

    # ----- loading ---------------------------------------------------------------------------------------------
    def resume_last(self):
        """``--resume``: continue from this run's last checkpoint; returns False (training starts at epoch 0:
        from the initial or, for fine-tuning, the SFT weights) when there is none."""
        if not self.resumable:
            raise ConfigError(f"resume=True: {type(self).__name__} cannot resume (not a RecBole Trainer); drop --resume")
        path = self.last_checkpoint_file
        for tmp in glob.glob(glob.escape(path) + ".tmp*"):  # a kill while saving: the old file is intact
            os.remove(tmp)
        if not os.path.isfile(path):
            # a fine-tuning run starts from its SFT weights, not from scratch
            self.logger.info(f"resume: no checkpoint {path} for this run; starting at epoch 0")
            return False
        self.resume_checkpoint(path)
        return True

    def resume_checkpoint(self, resume_file):
        """RecBole's resume (model, optimizer, epoch, early-stopping counter, best score) plus our ``resume`` extras;
        RecBole's bare ``torch.load`` made safe for torch >= 2.6."""
        with trusted_checkpoints():
            extra = read_checkpoint(resume_file, f"resume: the last checkpoint {resume_file}",
                                    "delete it to start the run over").get("resume")
            try:
                super().resume_checkpoint(resume_file)
            except (RuntimeError, KeyError, ValueError) as e:
                raise ConfigError(f"resume: cannot resume from {resume_file} ({_reason(e)}); delete it to start "
                                  "the run over") from None
        if extra is None:  # a plain RecBole checkpoint: RecBole's own resume only
            return
        best = extra["best_file"]  # not written yet if no validation had run
        if best and not os.path.isfile(best) and extra["best_valid_result"] is not None:
            raise ConfigError(f"resume: cannot resume from {resume_file}: its best checkpoint {best} is missing; delete "
                              f"{resume_file} to start the run over")
        self.saved_model_file = best or self.saved_model_file
        self.best_valid_result = extra["best_valid_result"]
        self.epoch_times = list(extra["epoch_times"])
        self.valid_curve = list(extra.get("valid_curve", []))  # checkpoints written before these keys: none
        self.best_epoch = extra.get("best_epoch")
        sched = getattr(self, "lr_scheduler", None)
        if sched is not None and extra.get("lr_scheduler") is not None:
            sched.load_state_dict(extra["lr_scheduler"])
        # wall time of the earlier processes of this run up to their last checkpoint (checkpoints written before
        # this key existed: their training epochs' times, a lower bound)
        self.prior_elapsed_s = extra.get("elapsed_s", sum(self.epoch_times))
        self.prior_elapsed_estimated = "elapsed_s" not in extra
        self.resumed_finished = bool(extra["finished"])
        gen = _generator(self)
        if gen is not None and extra["generator"] is not None:
            gen.set_state(extra["generator"].cpu())
        self._pending_rng = {"rng": extra["rng"], "loader_rng": extra["loader_rng"]}

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
    has the mixin). Built at run time because the class is only known then: RecBole picks a model's trainer by its
    model type (``recbole.utils.get_trainer``), and the multi-process mixin goes in front of whichever trainer a run
    uses; writing one subclass per RecBole trainer and per method would be the alternative."""
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
