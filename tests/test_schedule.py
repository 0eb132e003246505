"""Learning-rate schedules (schedule.py) and how runs end (early stopping vs the epoch bound, result-row fields)."""
import glob
import json
import math
import re
import os

import pytest
import torch

import run_recbole_gflowgr
from gr_helpers import TINY_GR, patch_gr, with_args
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.trainer.schedule import Schedule, lr_factor, schedule_config
from test_resume import Killed, keep_last, kill_in_epoch, last_file, load


def test_lr_factor_shapes():
    # warmup: linear ramp to 1 at step warmup - 1
    assert [lr_factor(s, "constant", warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # cosine from 1 at the end of warmup to min_ratio at the last step, half-way at the middle
    assert lr_factor(2, "cosine", warmup=2, total=12) == 1.0
    assert lr_factor(7, "cosine", warmup=2, total=12) == pytest.approx(0.5)
    assert lr_factor(12, "cosine", warmup=2, total=12, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(50, "cosine", warmup=2, total=12, min_ratio=0.1) == pytest.approx(0.1)  # stays at the floor
    assert lr_factor(6, "linear", total=12) == pytest.approx(0.5)
    assert lr_factor(12, "linear", total=12, min_ratio=0.2) == pytest.approx(0.2)
    # inverse sqrt (T5 / TIGER): 1 at the end of the warmup, sqrt(warmup / step) after it
    assert lr_factor(3, "inverse_sqrt", warmup=4) == 1.0
    assert lr_factor(15, "inverse_sqrt", warmup=4) == pytest.approx(math.sqrt(4 / 16))
    assert lr_factor(99, "inverse_sqrt") == pytest.approx(0.1)
    # total not known yet: no decay
    assert lr_factor(5, "cosine") == 1.0


def test_scheduler_scales_every_group_from_its_own_base_lr_per_optimiser_step():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.5}], lr=0.1)
    schedule = Schedule({"lr_scheduler": "linear", "warmup_steps": 2, "warmup_ratio": 0.0, "min_lr_ratio": 0.0})
    schedule.total = 6
    schedule.attach(opt)
    seen = []
    for _ in range(7):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()  # the post hook steps the scheduler
    assert [s[0] for s in seen] == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025, 0.0])
    assert [s[1] for s in seen] == pytest.approx([5 * s[0] for s in seen])


class Keys(dict):
    def __getitem__(self, key):
        return self.get(key)


def test_warmup_steps_and_ratio_together_name_both_keys():
    # each key's own type and range: the schema (tests/test_config_schema.py tries every key)
    keys = {"warmup_steps": 10, "warmup_ratio": 0.1}
    with pytest.raises(ConfigError, match=re.escape("warmup_steps=10 and warmup_ratio=0.1 are both set; give one")):
        schedule_config(Keys(keys), finetuning=False)
    with pytest.raises(ConfigError, match="finetune_warmup_steps=10 and finetune_warmup_ratio"):  # their own keys
        schedule_config(Keys({"finetune_" + k: v for k, v in keys.items()}), finetuning=True)


def rows(path="res/tiny.jsonl"):
    with open(path) as f:
        return [json.loads(line) for line in f]


def record_lrs(monkeypatch):
    """The lr each epoch starts with (what the trainer logs), per run: a list of lists."""
    from recbole_gflowgr.trainer.base import TrainerMixin

    original, runs = TrainerMixin.current_lr, []

    def current_lr(self):
        lr = original(self)
        if not runs or runs[-1][0] is not self:
            runs.append((self, []))
        runs[-1][1].append(lr)
        return lr

    monkeypatch.setattr(TrainerMixin, "current_lr", current_lr)
    return runs


def test_sft_run_follows_the_schedule_and_logs_the_lr(monkeypatch):
    args = ["--model=TIGER"] + patch_gr(monkeypatch) + with_args(
        TINY_GR, ["--epochs=3", "--lr_scheduler=linear", "--warmup_steps=1", "--learning_rate=0.01"])
    keep_last(monkeypatch)
    runs = record_lrs(monkeypatch)
    assert run_recbole_gflowgr.main(args) == 0
    row = rows()[-1]
    steps = load(last_file("saved"))["resume"]["lr_scheduler"]["last_epoch"]
    per_epoch = steps // 3
    assert steps == 3 * per_epoch > 0  # one scheduler step per optimiser step
    # lr at the start of each epoch: 1e-2 * linear decay (warmup 1 step) over 3 * per_epoch steps
    expected = [0.01 * lr_factor(e * per_epoch, "linear", 1, steps) for e in range(3)]
    assert runs[-1][1] == pytest.approx(expected)
    assert row["config"]["lr_scheduler"] == "linear"


def test_decay_horizon_shorter_than_the_bound_holds_the_floor_after_it(monkeypatch):
    """lr_decay_epochs=1 of a 3-epoch run: the cosine reaches min_lr_ratio after epoch 0 and stays there."""
    args = ["--model=TIGER"] + patch_gr(monkeypatch) + with_args(
        TINY_GR, ["--epochs=3", "--lr_scheduler=cosine", "--lr_decay_epochs=1", "--min_lr_ratio=0.1",
                  "--learning_rate=0.01"])
    keep_last(monkeypatch)
    runs = record_lrs(monkeypatch)
    assert run_recbole_gflowgr.main(args) == 0
    assert runs[-1][1] == pytest.approx([0.01, 0.001, 0.001])


def test_schedule_keys_at_their_default_leave_the_config_hash_as_before():
    from recbole_gflowgr.trainer.results import config_hash

    plain = {"model": "TIGER", "learning_rate": 0.001}
    neutral = dict(plain, lr_scheduler="constant", warmup_steps=0, warmup_ratio=0.0, min_lr_ratio=0.0,
                   finetune_lr_scheduler="constant", finetune_warmup_steps=0)
    assert config_hash(neutral) == config_hash(plain)
    assert config_hash(dict(neutral, lr_scheduler="cosine")) != config_hash(plain)
    assert config_hash(dict(neutral, warmup_steps=5)) != config_hash(plain)


@pytest.mark.parametrize("method", ["sft", "gflowgr-tb"])
def test_killed_run_resumes_its_schedule_exactly(monkeypatch, method):
    """A run with warmup + cosine killed in epoch 1 and resumed: same scheduler position, lrs and final weights as
    the uninterrupted run."""
    sched = ["--lr_scheduler=cosine", "--warmup_steps=2", "--finetune_lr_scheduler=cosine",
             "--finetune_warmup_ratio=0.2", "--learning_rate=0.01", "--finetune_learning_rate=0.001"]
    args = ["--model=TIGER", f"--finetune={method}"] + patch_gr(monkeypatch) + with_args(
        TINY_GR, ["--epochs=3", "--finetune_epochs=3", "--stopping_step=10"] + sched)
    keep_last(monkeypatch)
    runs = record_lrs(monkeypatch)
    assert run_recbole_gflowgr.main(args + ["--checkpoint_dir=whole"]) == 0
    whole, whole_lrs = rows()[-1], runs[-1][1]
    with monkeypatch.context() as m:
        kill_in_epoch(m, 1, finetune=method)
        with pytest.raises(Killed):
            run_recbole_gflowgr.main(args + ["--checkpoint_dir=cut"])
    assert run_recbole_gflowgr.main(args + ["--checkpoint_dir=cut", "--resume=True"]) == 0
    resumed = rows()[-1]
    a, b = load(last_file("whole", method)), load(last_file("cut", method))
    assert a["resume"]["lr_scheduler"] == b["resume"]["lr_scheduler"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]  # lr and initial_lr of every group
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert runs[-1][1] == whole_lrs[1:]  # the resumed process starts at epoch 1, with the same lrs
    assert whole_lrs[2] < whole_lrs[1]
    assert [p["epoch"] for p in resumed["valid_curve"]] == [p["epoch"] for p in whole["valid_curve"]] == [1, 2, 3]
    assert [p["ndcg@10"] for p in resumed["valid_curve"]] == [p["ndcg@10"] for p in whole["valid_curve"]]
    assert (resumed["best_epoch"], resumed["epochs_trained"]) == (whole["best_epoch"], whole["epochs_trained"])


def test_row_says_whether_early_stopping_or_the_bound_ended_the_run(monkeypatch):
    base = ["--model=TIGER"] + patch_gr(monkeypatch)
    # the valid score falls after the first validation (RecBole's score function replaced)
    import recbole.trainer.trainer as rt

    calls = []

    def falling(valid_result, valid_metric=None):
        calls.append(1)
        return 1.0 / len(calls)  # every validation worse than the first

    monkeypatch.setattr(rt, "calculate_valid_score", falling)
    assert run_recbole_gflowgr.main(base + with_args(TINY_GR, ["--epochs=20", "--stopping_step=2"])) == 0
    row = rows()[-1]
    assert row["stopped_early"] is True
    assert (row["best_epoch"], row["epochs_trained"]) == (1, 4)  # best at 1, then 3 worse validations
    assert [p["epoch"] for p in row["valid_curve"]] == [1, 2, 3, 4]
    assert all(p["elapsed_s"] > 0 for p in row["valid_curve"])
    assert [p["elapsed_s"] for p in row["valid_curve"]] == sorted(p["elapsed_s"] for p in row["valid_curve"])

    calls.clear()
    monkeypatch.setattr(rt, "calculate_valid_score", lambda *a, **k: calls.append(1) or float(len(calls)))
    assert run_recbole_gflowgr.main(base + with_args(TINY_GR, ["--epochs=3", "--stopping_step=2"])) == 0
    row = rows()[-1]
    assert row["stopped_early"] is False
    assert (row["best_epoch"], row["epochs_trained"], len(row["valid_curve"])) == (3, 3, 3)


def test_collaborative_sasrec_follows_its_schedule(monkeypatch):
    """RecBole's own trainers (the collaborative SASRec, configured through collaborative_args) get the schedule
    through with_checkpoint_fix: inverse_sqrt after 1 warmup step over 2 epochs of 1 batch."""
    from test_foundation import tiny_letter

    src, _, _ = tiny_letter(n_users=60)
    runs = record_lrs(monkeypatch)
    assert run_recbole_gflowgr.main(["--model=SASRec", "--dataset=tiny", f"--source_path={src}", "--epochs=3",
                                     "--show_progress=False", "--results_dir=res", "--hidden_size=16",
                                     "--inner_size=32", "--train_batch_size=2048", "--learning_rate=0.004",
                                     "--lr_scheduler=inverse_sqrt", "--warmup_steps=1"]) == 0
    assert runs[-1][1] == pytest.approx([0.004, 0.004 / math.sqrt(2), 0.004 / math.sqrt(3)])
