"""Diversity analysis (paper §4.5): the KL-to-normal statistic and a tiny SFT vs GFlowGR report."""
import json
import os

import numpy as np
import pytest

import run_recbole_gflowgr
from gr_helpers import TINY_GR, FakeScorer, patch_gr
from recbole_gflowgr import diversity
from recbole_gflowgr.foundation.errors import ConfigError


def test_kl_to_normal_is_small_for_normal_samples_and_large_for_a_two_peak_sample():
    rng = np.random.default_rng(0)
    assert diversity.kl_to_normal(rng.normal(0.3, 0.05, 200_000)) < 0.01
    two_peaks = np.concatenate([rng.normal(0.1, 0.01, 50_000), rng.normal(0.9, 0.01, 50_000)])
    assert diversity.kl_to_normal(two_peaks) > 1.0
    assert diversity.kl_to_normal(np.full(10, 0.2)) == 0.0


def test_report_of_sft_and_gflowgr_checkpoints(monkeypatch):
    args = patch_gr(monkeypatch) + TINY_GR
    for method in ("sft", "gflowgr-tb"):
        assert run_recbole_gflowgr.main(["--model=TIGER", f"--finetune={method}"] + args) == 0
    paths = diversity.checkpoints_from_rows("res", "tiny", "TIGER", ["sft", "gflowgr-tb"], 42)
    stats = [diversity.analyse(p, k=10, scorer=FakeScorer(31)) for p in paths]
    assert [s["finetune"] for s in stats] == ["sft", "gflowgr-tb"]
    for s in stats:
        assert s["n_lists"] == 60 and s["probs"].shape == (600,)  # 60 test users × 10 generated items
        assert 0 < s["itemcoverage@10"] <= 1 and 0 <= s["giniindex@10"] <= 1 and 0 <= s["cm_mean"] <= 1
        assert 0 < s["gen_prob_std"] and s["cm_range"] <= 1 and "recall@10" in s
    table = diversity.report(stats, "div", "tiny-TIGER-seed42")
    assert table.splitlines()[2].startswith("| sft |") and table.splitlines()[3].startswith("| gflowgr-tb |")
    assert sorted(os.listdir("div")) == ["tiny-TIGER-seed42.json", "tiny-TIGER-seed42.md", "tiny-TIGER-seed42.png"]
    assert [s["finetune"] for s in json.load(open("div/tiny-TIGER-seed42.json"))] == ["sft", "gflowgr-tb"]
    # a grid variant's run is labelled with the variant (read from its checkpoint's config)
    assert [s["variant"] for s in stats] == ["", ""]
    assert run_recbole_gflowgr.main(["--model=TIGER", "--finetune=gflowgr-tb", "--gflowgr_lambda=0",
                                     "--experiment_variant=lambda0"] + args) == 0
    with open("res/tiny.jsonl") as f:
        variant_run = json.loads(f.read().splitlines()[-1])["checkpoint"]
    control = diversity.analyse(variant_run, k=10, scorer=FakeScorer(31))
    table = diversity.report([stats[0], dict(control, n_lists=22363)], "div2", "v")
    assert control["variant"] == "lambda0" and table.splitlines()[3].startswith("| gflowgr-tb [lambda0] | 22363 |")
    # a later row of an ablation variant of the same method and seed is not the method
    with open("res/tiny.jsonl") as f:
        last = json.loads(f.read().splitlines()[-1])
    with open("res/tiny.jsonl", "a") as f:
        f.write(json.dumps(dict(last, checkpoint=paths[0], experiment_variant="wo-Ada")) + "\n")
    assert diversity.checkpoints_from_rows("res", "tiny", "TIGER", ["sft", "gflowgr-tb"], 42) == paths
    with pytest.raises(ConfigError, match=r"method\(s\) \['dpo'\]"):
        diversity.checkpoints_from_rows("res", "tiny", "TIGER", ["sft", "dpo"], 42)
