"""Resumable runs (``--resume``) and atomic checkpoints, as hooks on RecBole's ``Trainer``.

* **Run identity**: ``<checkpoint_dir>/<model>-<dataset>-<finetune>-seed<seed>-<hash>-last.pth``, ``<hash>`` = the
  result row's config hash (every key but the volatile ones of ``results.VOLATILE_KEYS``: paths, ``resume``, ...)
  with ``pretrained_checkpoint`` added. The same command line finds the file again; any changed hyperparameter
  is another run (and starts from scratch).
* **What** the last checkpoint holds: RecBole's own checkpoint (the keys ``Trainer.resume_checkpoint`` reads: model
  state, so also GFlowGR's log Z / flow heads and PPO's value head, which are submodules of the model; optimizer,
  so also log Z's own group; epoch; early-stopping counter; best valid score) plus ``resume``: the best valid
  result, the path of the best checkpoint, the epoch times, the validation curve and best epoch (result rows'
  ``valid_curve`` / ``best_epoch``), the lr scheduler's state (``schedule.py``), whether training had ended (last
  epoch or early stop) and the RNG states (python, numpy, torch, CUDA, the train loader's shuffling generator, the trainer's own
  ``generator``: GFlowGR's sampler, the baselines' rollouts). GFlowGR's curriculum position is a function of
  (epoch, batch), so the epoch counter restores it.
* **When**: after each validation (RecBole's ``callback_fn``: the best checkpoint and early stopping are updated
  by then) and, after an epoch without validation, when the next one starts. Never after a non-finite loss
  (``numerics.py``): the last good checkpoint is kept.
* **Loading**: ``--resume`` → RecBole's ``resume_checkpoint`` + the extras; RNG states are set when ``fit`` starts;
  a run whose training had ended goes straight to the test evaluation of its best checkpoint. No last checkpoint:
  the run starts from scratch. The last checkpoint is deleted once the run's result row is written.
* Every checkpoint (RecBole's best one included) is written to a temporary file and ``os.replace``d: a kill
  leaves the old file or the new one, never a truncated one.
"""
import contextlib
import glob
import os
import pickle
import random
import time

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_gflowgr.foundation.compat import trusted_torch_load
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.foundation.utils import atomic_file, atomic_save

LAST_SUFFIX = "-last.pth"


def run_id(config):
    """``<model>-<dataset>-<finetune>-seed<seed>-<hash>``: what identifies one run for ``--resume``. An SFT run
    (and a RecBole model's) is identified by its backbone keys only: a fine-tuning key (``gflowgr_*``, ``dpo_*``,
    ``finetune_*``, ...) does nothing to it, so a changed fine-tuning default does not orphan its last checkpoint."""
    from recbole_gflowgr import OUR_MODELS
    from recbole_gflowgr.trainer.results import backbone_keys, config_hash, plain_config

    finetune = config["finetune"] if config["model"] in OUR_MODELS else "none"
    plain = plain_config(config)
    if finetune in ("sft", "none"):
        plain = backbone_keys(plain)
    plain["resume_pretrained"] = config["pretrained_checkpoint"] or None  # volatile in rows, not for resuming
    return f"{config['model']}-{config['dataset']}-{finetune}-seed{config['seed']}-{config_hash(plain)}"


def _reason(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def read_checkpoint(path, what, fix):
    """A RecBole checkpoint (dict with ``state_dict``) at ``path``; ConfigError '<what> is not a ...; <fix>' when
    it is unreadable or something else (``what`` names the key and the file)."""
    try:
        state = trusted_torch_load(path, "cpu")
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise ConfigError(f"{what} is not a readable checkpoint ({_reason(e)}); {fix}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ConfigError(f"{what} is not a RecBole checkpoint (no 'state_dict'); {fix}")
    return state


def rng_states():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states):
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


@contextlib.contextmanager
def preserved_rng():
    """Run the block without moving the global RNGs: a lazy load (e.g. the collaborative model, whose layers draw a
    random init before its weights are loaded) must not shift the training stream, or a resumed run, which loads
    it in another epoch, would draw other numbers than the uninterrupted one."""
    states = rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


def _generator(trainer):
    gen = getattr(trainer, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


class ResumeMixin:
    """Hooks of RecBole's ``Trainer`` (``fit``'s ``callback_fn``, ``_save_checkpoint``, ``resume_checkpoint``,
    ``_train_epoch``) for last checkpoints and ``--resume``; trainers that are not a RecBole ``Trainer`` (the
    decision-tree ones) pass through unchanged."""
    prior_elapsed_s = 0.0  # wall seconds of the earlier processes of a resumed run (set by resume_checkpoint)
    prior_elapsed_estimated = False
    best_epoch = None  # epochs trained (counted from 1) when the best valid score was reached

    @property
    def stopped_early(self):
        """Whether early stopping ended training (False: the epoch bound did, or no validation ran)."""
        return self.cur_step > self.stopping_step

    def _valid_epoch(self, *args, **kwargs):
        score, result = super()._valid_epoch(*args, **kwargs)
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

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if not self.resumable:
            return super().fit(train_data, valid_data, verbose, saved, show_progress)
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

        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn=end_of_epoch)

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self.current_epoch = epoch_idx
        if self.resumable and getattr(self, "_saving", False) and self.last_saved_epoch < epoch_idx - 1:
            self.save_last(epoch_idx - 1)  # the previous epoch had no validation, so no callback
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

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
        """RecBole's resume (model, optimizer, epoch, early-stopping counter, best score) plus our ``resume`` extras."""
        extra = read_checkpoint(resume_file, f"resume: the last checkpoint {resume_file}",
                                "delete it to start the run over").get("resume")
        try:
            super().resume_checkpoint(resume_file)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ConfigError(f"resume: cannot resume from {resume_file} ({_reason(e)}); delete it to start the run "
                              "over") from None
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
