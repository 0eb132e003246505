"""Shared fixtures of the generative-model tests: a tiny dataset, stand-in semantic IDs and collaborative model."""

import numpy as np
import pandas as pd
import torch

from recbole_gflowgr.tokenizer.semantic_ids import SemanticIDs
from test_foundation import tiny_letter

TINY_GR = ["--d_model=16", "--d_kv=8", "--num_heads=2", "--d_ff=32", "--num_encoder_layers=1",
           "--num_decoder_layers=1", "--train_batch_size=64", "--eval_batch_size=64", "--show_progress=False",
           "--results_dir=res", "--epochs=1", "--finetune_epochs=1", "--beam_size=10"]


def fake_semantic_ids(config, tokenizer, levels=(4, 4), cf_embeddings=None):
    """Random distinct 3-token IDs (2 code levels + a disambiguation level) for the items of the converted dataset."""
    name = config["dataset"]
    items = pd.read_csv(f"{config['data_path']}/{name}.item", sep="\t", dtype=str, usecols=[0]).iloc[:, 0].tolist()
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, k, len(items)) for k in levels] + [np.zeros(len(items), int)], 1)
    seen = {}
    for row in codes:
        key = tuple(row[:-1])
        row[-1] = seen.get(key, 0)
        seen[key] = row[-1] + 1
    return SemanticIDs(items, codes.astype(np.int64), list(levels) + [int(codes[:, -1].max()) + 1], "fake")


class FakeScorer:
    """Collaborative-model stand-in: fixed random scores in [0, 1] per item."""

    def __init__(self, n_items):
        self.n_items = n_items
        self.item_scores = torch.rand(n_items, generator=torch.Generator().manual_seed(0))

    def score(self, item_seq, item_len, candidates=None, pos=None):
        scores = self.item_scores.to(item_seq.device).expand(item_seq.shape[0], -1).clone()  # (B, n_items)
        return scores if candidates is None else scores.gather(1, candidates)


def fake_load_scorer(dataset, data_path="dataset", device="cpu", config_dict=None, recbole_dataset=None):
    return FakeScorer(recbole_dataset.item_num)


def with_args(base, extra):
    """``base`` --key=value list with the keys of ``extra`` replaced."""
    keys = {a.split("=", 1)[0] for a in extra}
    return [a for a in base if a.split("=", 1)[0] not in keys] + list(extra)


def patch_gr(monkeypatch):
    """Stand-in tokenizer and collaborative model: these tests are about the backbone and trainers."""
    import recbole_gflowgr.model.tiger as tiger
    import recbole_gflowgr.quick_start as quick_start

    monkeypatch.setattr(tiger, "fetch_semantic_ids", fake_semantic_ids)
    monkeypatch.setattr(quick_start, "load_scorer", fake_load_scorer)
    src, _, _ = tiny_letter(n_users=60, n_items=30, seq_len=7)
    return [f"--source_path={src}", "--dataset=tiny"]
