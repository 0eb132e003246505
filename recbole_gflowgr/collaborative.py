"""The collaborative model (CM) of GFlowGR §3: RecBole's own SASRec, trained once per dataset and cached.

* :func:`train_or_load` trains SASRec through our runner (so its result row lands in results/ beside every other
  run) with ``properties/collaborative.yaml`` and keeps the checkpoint at
  ``<checkpoint_dir>/collaborative/<dataset>-SASRec-<config hash>.pth``; later calls load it.
* :class:`CollaborativeScorer` gives, without gradient and on the training device, scores in [0, 1] of a batch of
  histories against candidate items or the whole catalog (R_cm of GFlowGR's reward, ``gflowgr_cm_score``): per user,
  the rank percentile of an item's SASRec logit among the allowed items (``percentile``, default: not in the
  history, not the positive, not padding; what the adaptive sampler's quantiles rank), or the logits over all items
  min-max normalised (``minmax``: best item of the catalog 1, worst 0). Padding item 0 is never scored above 0.
* :func:`sasrec_item_embeddings` exports the trained item embedding table for LETTER's collaborative regulariser.
"""
import json
import logging
import os
import shutil
from logging import getLogger

import numpy as np
import torch

from recbole_gflowgr.compat import trusted_torch_load
from recbole_gflowgr.config import PROPERTIES
from recbole_gflowgr.utils import atomic_file, training_lock

CM_CONFIG = os.path.join(PROPERTIES, "collaborative.yaml")


def _settings(data_path):
    """``data_path``: the root of the converted datasets, or the parent's :func:`dataset_settings` dict."""
    return dict(data_path) if isinstance(data_path, dict) else {"data_path": data_path}


def _cm_config(dataset, data_path="dataset", config_dict=None):
    from recbole_gflowgr.quick_start import load_config

    overrides = {**_settings(data_path), "show_progress": False, **(config_dict or {})}
    return load_config("SASRec", dataset, config_file_list=[CM_CONFIG], config_dict=overrides)


def cache_path(config):
    from recbole_gflowgr.results import config_hash, plain_config

    folder = os.path.join(config["checkpoint_dir"], "collaborative")
    return os.path.join(folder, f"{config['dataset']}-SASRec-{config_hash(plain_config(config))}.pth")


def train_or_load(dataset, data_path="dataset", config_dict=None):
    """Path of the trained CM checkpoint for ``dataset`` (trained now if not cached; concurrent callers wait for
    the one that trains). ``data_path``: a root folder or the parent run's ``dataset_settings(config)`` (what every
    caller inside a run passes, so that the CM sees the same source as its parent)."""
    config = _cm_config(dataset, data_path, config_dict)
    path = cache_path(config)
    if os.path.isfile(path):
        return path
    with training_lock(path):
        if not os.path.isfile(path):  # another process may have finished it while we waited
            _train(dataset, data_path, config_dict, path)
    return path


def _train(dataset, data_path, config_dict, path):
    from recbole_gflowgr.quick_start import run

    # resume: an interrupted CM training (hours on CPU for yelp) continues from its last epoch's checkpoint
    # its row is labelled "cm" (not part of config_hash) so the leaderboard tells it from Table 1's SASRec cells,
    # which train with RecBole's defaults (up to 300 epochs) rather than collaborative.yaml's 50
    overrides = {**_settings(data_path), "show_progress": False, "resume": True, "experiment_variant": "cm",
                 **(config_dict or {})}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        row = run("SASRec", dataset, config_file_list=[CM_CONFIG], config_dict=overrides)
    finally:  # run() points the logger at the CM's own log file: give the caller's run its log back
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    with atomic_file(path) as tmp:
        shutil.copyfile(row["checkpoint"], tmp)
    with open(path[:-4] + ".json", "w") as f:
        json.dump({k: row[k] for k in ("valid", "test", "wall_s", "device", "commit", "config_hash")}, f, indent=1)
    getLogger().info(f"collaborative model cached at {path}")


MODES = ("percentile", "minmax")


def rank_percentile(logits, allowed):
    """(B, n) per-row percentile in [0, 1] of every entry of ``logits`` (B, n) among the ``allowed`` (B, n) entries
    of its row, itself left out: the share of the other allowed entries below it, ties counted half (the lowest
    allowed entry 0, the highest 1; an entry that is not allowed, e.g. the positive, gets the share of allowed
    entries it beats). Rows with no other allowed entry give 0."""
    s = logits.float()
    ordered = s.masked_fill(~allowed, torch.inf).sort(dim=1).values  # (B, n): the allowed logits first, ascending
    below = torch.searchsorted(ordered, s.contiguous(), side="left")  # (B, n) allowed entries strictly below
    upto = torch.searchsorted(ordered, s.contiguous(), side="right")  # (B, n) ... below or tied
    n_allowed = allowed.sum(1, keepdim=True)  # (B, 1)
    upto = torch.minimum(upto, n_allowed)  # a +inf logit must not count the excluded +inf padding of `ordered`
    below = torch.minimum(below, n_allowed)
    self_ = allowed.to(torch.long)  # an allowed entry ties with itself: not counted
    others = (n_allowed - self_).clamp_min(1)  # (B, n)
    return ((below + 0.5 * (upto - below - self_)) / others).clamp_(0.0, 1.0)


class CollaborativeScorer:
    """Frozen SASRec: ``score(item_seq, item_seq_len, candidates=None, pos=None)`` → (B, n_items) or (B, C) in
    [0, 1], normalised per user as ``mode`` says (``percentile`` or ``minmax``, see the module docstring; ``pos``
    (B,), the observed next items, is left out of the percentile's reference set). Computed in float32, also in an
    ``enable_amp`` run (autocast off).

    ``item_seq`` uses RecBole's internal item ids of the dataset the CM was trained on; the GR models are trained
    on the same RecBole dataset, so their ids agree (checked by the item count at construction).
    """

    def __init__(self, model, mode="percentile"):
        if mode not in MODES:
            raise ValueError(f"gflowgr_cm_score='{mode}': use percentile or minmax")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.n_items = model.n_items
        self.mode = mode

    @classmethod
    def from_checkpoint(cls, path, dataset, device="cpu"):
        from recbole.model.sequential_recommender import SASRec

        checkpoint = trusted_torch_load(path, map_location=device)
        model = SASRec(checkpoint["config"], dataset).to(device)
        model.load_state_dict(checkpoint["state_dict"])
        return cls(model)

    @torch.no_grad()
    def logits(self, item_seq, item_seq_len):
        with torch.autocast(device_type=item_seq.device.type, enabled=False):  # float32 even under enable_amp
            seq_output = self.model.forward(item_seq, item_seq_len).float()  # (B, d)
            return seq_output @ self.model.item_embedding.weight.float().T  # (B, n_items)

    @torch.no_grad()
    def score(self, item_seq, item_seq_len, candidates=None, pos=None):
        logits = self.logits(item_seq, item_seq_len)  # (B, n_items) float32
        if self.mode == "percentile":
            allowed = torch.ones_like(logits, dtype=torch.bool)  # (B, n_items)
            allowed[:, 0] = False
            allowed.scatter_(1, item_seq, False)
            if pos is not None:
                allowed.scatter_(1, pos.view(-1, 1), False)
            scores = rank_percentile(logits, allowed)  # (B, n_items)
            scores[:, 0] = 0.0  # padding item
        else:
            logits[:, 0] = -torch.inf  # padding item
            real = logits[:, 1:]
            low = real.min(dim=1, keepdim=True).values
            high = real.max(dim=1, keepdim=True).values
            scores = ((logits - low) / (high - low).clamp_min(1e-12)).clamp_(0.0, 1.0)  # (B, n_items), pad -> 0
        if candidates is not None:
            scores = scores.gather(1, candidates)  # (B, C)
        return scores


def load_scorer(dataset, data_path="dataset", device="cpu", config_dict=None, recbole_dataset=None):
    """Train (if needed) and load the CM of ``dataset``; ``recbole_dataset`` avoids rebuilding RecBole's dataset."""
    from recbole_gflowgr.quick_start import prepare_data

    path = train_or_load(dataset, data_path, config_dict)
    if recbole_dataset is None:
        recbole_dataset, _ = prepare_data(_cm_config(dataset, data_path, config_dict))
    return CollaborativeScorer.from_checkpoint(path, recbole_dataset, device)


def sasrec_item_embeddings(dataset, data_root="dataset", device="cpu", config_dict=None):
    """(item tokens, (n, d) float32 array): the CM's item embeddings for every real item (padding dropped);
    ``data_root`` as ``data_path`` of :func:`train_or_load`."""
    from recbole.data import create_dataset

    config = _cm_config(dataset, data_root, config_dict)
    path = train_or_load(dataset, data_root, config_dict)
    from recbole_gflowgr.data import prepare_dataset

    prepare_dataset(config["dataset"], config["data_path"], config["source_path"], config["source_prefix"])
    recbole_dataset = create_dataset(config)
    weight = trusted_torch_load(path, map_location=device)["state_dict"]["item_embedding.weight"]  # (n_items, d)
    ids = np.arange(1, weight.shape[0])
    tokens = [str(t) for t in recbole_dataset.id2token(recbole_dataset.iid_field, ids)]
    return tokens, weight[1:].float().cpu().numpy()
