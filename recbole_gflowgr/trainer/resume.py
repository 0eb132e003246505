"""Resumable runs (``--resume``) and atomic checkpoints, as hooks on RecBole's ``Trainer`` (the hooks are methods of
``base.TrainerMixin``, one override per RecBole hook; this module holds the run identity, reading and RNG states).

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
import pickle
import random

import numpy as np
import torch

from recbole_gflowgr.foundation.compat import trusted_torch_load
from recbole_gflowgr.foundation.errors import ConfigError

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
