"""flow_target: the reward-proportional target of GFlowGR's flow loss against the SFT policy (pure part, CLI)."""
import json
import math
import os

import pytest
import torch

from conftest import REPO
from recbole_gflowgr.flow_target import main, summarise, target_log_share


def test_target_share_is_the_positive_reward_over_the_catalogue_sum():
    log_r = torch.tensor([[2.0, 1.0, 1.0, 0.0], [0.5, 0.5, 3.0, 1e-6]]).clamp(min=1e-6).log()  # (2, 4)
    is_pos = torch.tensor([[True, False, False, False], [False, False, True, False]])
    log_share, log_z = target_log_share(log_r, is_pos)
    assert log_share.exp().tolist() == pytest.approx([2 / 4.000001, 3 / 4.000001], rel=1e-5)
    assert log_z.tolist() == pytest.approx([math.log(4.000001), math.log(4.000001)], rel=1e-5)
    with pytest.raises(ValueError, match="exactly one positive"):
        target_log_share(log_r, torch.zeros(2, 4, dtype=torch.bool))


def test_summary_counts_where_the_target_is_below_the_sft_policy():
    log_target = torch.tensor([0.1, 0.2, 0.4]).log()
    log_sft = torch.tensor([0.2, 0.1, 0.8]).log()
    s = summarise(2.0, log_target, log_sft, torch.zeros(3))
    assert s["target_below_sft"] == pytest.approx(2 / 3) and s["n"] == 3
    assert s["target_median"] == pytest.approx(0.2) and s["sft_mean"] == pytest.approx(1.1 / 3)
    assert s["mean_log_ratio"] == pytest.approx((math.log(0.5) + math.log(2) + math.log(0.5)) / 3)


def test_cli_measures_a_cached_sft_checkpoint(monkeypatch, capsys):
    from gr_helpers import TINY_GR, patch_gr

    import run_recbole_gflowgr

    args = ["--model=TIGER", f"--config_files={os.path.join(REPO, 'properties', 'small.yaml')}"]
    args += patch_gr(monkeypatch) + TINY_GR
    assert main(args + ["--batches=1"]) == 2  # no SFT checkpoint yet: one line, exit 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no SFT checkpoint at ") and "\n" not in err
    assert run_recbole_gflowgr.main(args + ["--finetune=sft"]) == 0
    capsys.readouterr()
    assert main(args + ["--batches=2", "--exponents=1,4", "--out=diag/target.json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| beta | target P(pos) mean") and [line.split(" | ")[0] for line in lines[2:4]] == ["| 1", "| 4"]
    with open("diag/target.json") as f:
        out = json.load(f)
    low, high = out["results"]
    assert out["batches"] == 2 and low["n"] == high["n"] > 0 and out["n_items"] == 30
    assert 0 < low["target_mean"] < high["target_mean"] <= 1  # a larger exponent sharpens the target
    for bad, start in [("--exponents=0", "error: --exponents=0"), ("--batches=-1", "error: --batches=-1"),
                       ("epochs", "error: unrecognised argument(s) epochs")]:
        assert main(args + [bad]) == 2
        assert capsys.readouterr().err.startswith(start)
