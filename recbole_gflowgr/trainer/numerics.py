"""Divergence checks during training: a clear stop on a non-finite loss or log Z, a warning when log Z drifts.

* :meth:`base.TrainerMixin._check_nan` replaces RecBole's ``ValueError('Training loss is nan')`` (it also catches
  ``inf``) with a :class:`TrainingError`: one line naming the epoch, the run, the checkpoints that are kept (the
  last good one, ``resume.py``, and the best one) and the keys to change. The CLI prints it as ``error: ...``.
* :func:`check_log_z` (GFlowGR): a non-finite log Z (TB's log Z or DB/SubTB's log F(s_0)) stops the run the same
  way; ``|log Z| > gflowgr_logz_bound`` logs a warning once per epoch. With rewards in ``[eps, 3 ** exponent]``
  (``reward.py``) log Z, the log of the total reward over the catalog, lies within about
  ``[log eps, exponent * log 3 + log n_items]``: |log Z| in the hundreds means the flow estimate is diverging.
"""
import math
import os


from recbole_gflowgr.foundation.errors import TrainingError


def _kept(trainer):
    last = getattr(trainer, "last_checkpoint_file", None)
    parts = []
    if last and os.path.isfile(last):
        parts.append(f"the last good checkpoint {last} (epoch {getattr(trainer, 'last_saved_epoch', '?')})")
    best = getattr(trainer, "saved_model_file", None)
    if best and os.path.isfile(best):
        parts.append(f"the best one {best}")
    return " and ".join(parts) + " are kept" if parts else "no epoch had finished, so no checkpoint was written"


def diverged(trainer, what, fix):
    """The :class:`TrainingError` for ``what`` (e.g. 'training loss is nan') at the trainer's current epoch."""
    from recbole_gflowgr import OUR_MODELS

    config = trainer.config
    run = f"{config['model']} on '{config['dataset']}'"
    tuned = config["model"] in OUR_MODELS and config["finetune"] != "sft"
    if tuned:
        run += f", finetune={config['finetune']}"
    lr = "finetune_learning_rate" if tuned else "learning_rate"
    error = TrainingError(f"{what} in epoch {getattr(trainer, 'current_epoch', '?')} ({run}): training stopped; "
                          f"{_kept(trainer)}; fix: lower {lr}{fix} or set clip_grad_norm, then rerun")
    trainer.logger.error(str(error))  # in the run's log too, not only on the CLI's stderr
    return error


def check_log_z(trainer, log_z):
    """Stop on a non-finite log Z (any element of ``log_z``), warn once per epoch when |log Z| exceeds
    ``gflowgr_logz_bound`` (0 or empty: no warning). Returns max |log Z|."""
    worst = float(log_z.detach().abs().max()) if log_z.numel() else 0.0
    if not math.isfinite(worst):
        raise diverged(trainer, f"GFlowGR's log Z is {worst}", ", gflowgr_logz_lr or gflowgr_lambda")
    bound = trainer.config["gflowgr_logz_bound"]
    epoch = getattr(trainer, "current_epoch", None)
    if bound and worst > bound and getattr(trainer, "_logz_warned", None) != epoch:
        trainer._logz_warned = epoch
        trainer.logger.warning(f"epoch {epoch}: |log Z| = {worst:.4g} exceeds gflowgr_logz_bound={bound}: the flow "
                               "estimate is diverging (expected within about [log eps, log n_items + exponent * log 3]); "
                               "lower gflowgr_logz_lr or gflowgr_lambda")
    return worst
