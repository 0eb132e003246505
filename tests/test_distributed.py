"""Multi-process training (issue 8, item 1): RecBole's torch.distributed mechanism with 2 CPU processes on gloo.

Tolerance of the 1-vs-2-process comparison: training is full-batch (``train_batch_size`` above the 240 training
samples, an even count, so RecBole's DistributedSampler adds no padding) with dropout off, so both runs take the
same gradient steps from the same initial weights (DDP broadcasts rank 0's, which a single process also draws);
the only difference is the order of float32 sums (each process averages its 120 samples, DDP averages the two).
Plain SGD without weight decay keeps that difference at float32 noise times the learning rate: measured <= 2e-5
(checked: <= 1e-4). Adam would turn noise in a ~0 gradient (a dead ReLU unit) into a step of up to lr, and is
blind to the gradients' scale (a sum instead of a mean would pass); weight decay would shrink parameters outside
the loss in 2 processes only (DDP gives them a zero gradient, one process none: GFlowGR-TB's unused flow head).
The metrics, ranks of beam-search scores over 60 users, are then equal unless two candidates' scores fall within
that distance (measured: identical; checked: <= 1e-4, RecBole rounds to 4 places).
"""
import json

import pytest
import torch

from gr_helpers import TINY_GR, fake_load_scorer, fake_semantic_ids, patch_gr, with_args
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.quick_start import run
from recbole_gflowgr.trainer import distributed

TOL = 1e-4
EXACT = ["--train_batch_size=256", "--dropout_rate=0", "--epochs=2", "--finetune_epochs=1", "--learner=sgd",
         "--weight_decay=0", "--learning_rate=0.5", "--finetune_learning_rate=0.5", "--ip=127.0.0.1"]


def stand_ins():
    """Run first in every started process: monkeypatch does not cross process boundaries."""
    import recbole_gflowgr.model.tiger as tiger
    import recbole_gflowgr.quick_start as quick_start

    torch.set_num_threads(1)
    tiger.fetch_semantic_ids = fake_semantic_ids
    quick_start.load_scorer = fake_load_scorer


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(distributed, "CHILD_SETUP", [stand_ins])
    return with_args(patch_gr(monkeypatch) + TINY_GR, EXACT + [f"--port={distributed.free_port()}"])


def rows():
    with open("res/tiny.jsonl") as f:
        return [json.loads(line) for line in f]


def weights(row):
    return torch.load(row["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]


def assert_same_run(one, two):
    assert (one["config"]["nproc"], two["config"]["nproc"]) == (1, 2)
    for split in ("valid", "test"):
        assert one[split].keys() == two[split].keys()
        for key, value in one[split].items():
            assert abs(value - two[split][key]) <= TOL, (split, key, value, two[split][key])
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= TOL


def test_interleave_restores_dataset_order_and_drops_the_padding():
    from torch.utils.data.distributed import DistributedSampler

    n, world = 7, 3  # 7 samples over 3 ranks: 3 each, the sampler repeats samples 0 and 1
    parts = [torch.tensor(list(DistributedSampler(range(n), world, r, shuffle=False))) for r in range(world)]
    assert torch.equal(distributed.interleave(parts, n), torch.arange(n))
    rows_ = [torch.stack([p, -p], 1) for p in parts]  # (3, 2) per rank: rows keep their other dimensions
    assert torch.equal(distributed.interleave(rows_, n)[:, 0], torch.arange(n))


@pytest.mark.parametrize("arg,key", [("--nproc=0", "nproc=0"), ("--world_size=0", "world_size=0"),
                                     ("--offset=-1", "offset=-1"), ("--port=0", "port=0"),
                                     ("--nproc=2 --world_size=3 --offset=2", "offset [+] nproc = 4 exceeds")])
def test_impossible_distributed_keys_fail_before_anything_runs(tiny, arg, key):
    with pytest.raises(ConfigError, match=key):
        run("TIGER", cmd_args=with_args(tiny, arg.split()))


def test_two_processes_train_sft_to_the_metrics_of_one(tiny):
    one = run("TIGER", cmd_args=tiny)
    two = run("TIGER", cmd_args=tiny + ["--nproc=2"])
    assert rows() == [one, two]  # global rank 0 alone wrote a row (and the SFT cache, the export)
    assert_same_run(one, two)
    assert two["export"] and two["sft_cache"]


def test_gflowgr_log_z_trains_in_step_across_processes(tiny):
    """GFlowGR-TB with its learnable log Z (a head outside the T5): without augmented trajectories the loss is
    deterministic, so 2 processes must match 1, log Z included (with augmentation each rank draws its own)."""
    sft = run("TIGER", cmd_args=tiny)
    tuned = with_args(tiny, ["--finetune=gflowgr-tb", "--gflowgr_n_aug=0", "--gflowgr_logz_lr=0.1", "--gflowgr_logz=global",
                             f"--pretrained_checkpoint={sft['checkpoint']}"])
    one = run("TIGER", cmd_args=tuned)
    two = run("TIGER", cmd_args=tuned + ["--nproc=2"])
    assert_same_run(one, two)
    assert float(weights(two)["gflow_heads.logz"]) != 0.0  # log Z moved (its gradient was all-reduced, not lost)


def test_ppo_extra_optimiser_steps_stay_in_sync(tiny):
    """PPO's value head and its ppo_epochs=2 updates per rollout (a backward inside the loss function); every
    epoch ends with a check that the ranks hold the same weights (distributed.check_in_sync)."""
    sft = run("TIGER", cmd_args=tiny)
    row = run("TIGER", cmd_args=with_args(tiny, ["--finetune=ppo", "--ppo_epochs=2", "--nproc=2",
                                                 f"--pretrained_checkpoint={sft['checkpoint']}"]))
    assert row["finetune"] == "ppo" and all(0 <= v <= 1 for v in row["test"].values())
    assert any(k.startswith("ppo_value_head.") for k in weights(row))
