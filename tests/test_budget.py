"""time_budget_s (trainer/budget.py): training stops after the validation past which the next epoch, its validation
and the test evaluation would overrun the budget; the row is written as usual, saying what ended training."""
import json
import logging

import pytest
from recbole.trainer import Trainer

import run_recbole_gflowgr
from gr_helpers import TINY_GR, patch_gr, with_args
from recbole_gflowgr.trainer import budget
from recbole_gflowgr.trainer.results import config_hash

EPOCH_S, VALID_S = 10.0, 2.0


def rows(path="res/tiny.jsonl"):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_overruns_counts_the_next_interval_and_the_test_evaluation():
    # 30 s spent, next: 1 epoch of 10 s + its validation 2 s + test 2 s = 44 s
    assert budget.overruns(30, 10, 2, 1, 44) is False  # ends exactly at the budget: still fits
    assert budget.overruns(30, 10, 2, 1, 43.9) is True
    assert budget.overruns(30, 10, 2, 3, 64) is False and budget.overruns(30, 10, 2, 3, 63) is True  # eval_step 3
    assert budget.overruns(1e9, 10, 2, 1, 0) is False and budget.overruns(1e9, 10, 2, 1, None) is False  # off
    assert [budget.stop_reason(True, False), budget.stop_reason(False, True), budget.stop_reason(False, False)] == \
        ["time_budget", "early_stopping", "epochs"]


def test_budget_keys_at_zero_leave_config_hashes_as_they_were():
    plain = {"model": "TIGER", "epochs": 3}
    assert config_hash({**plain, "time_budget_s": 0, "finetune_time_budget_s": 0.0}) == config_hash(plain)
    assert config_hash({**plain, "time_budget_s": 60.0}) != config_hash(plain)


@pytest.fixture
def fake_clock(monkeypatch):
    """Every training epoch takes EPOCH_S and every validation VALID_S seconds of a fake clock; nothing else
    advances it (data loading, model building: 0 s)."""
    now = [0.0]
    monkeypatch.setattr(budget, "clock", lambda: now[0])
    train, valid = Trainer._train_epoch, Trainer._valid_epoch

    def train_epoch(self, *args, **kwargs):
        now[0] += EPOCH_S
        return train(self, *args, **kwargs)

    def valid_epoch(self, *args, **kwargs):
        now[0] += VALID_S
        return valid(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    monkeypatch.setattr(Trainer, "_valid_epoch", valid_epoch)
    return now


def test_sft_stops_at_the_last_epoch_that_fits_and_writes_its_row(monkeypatch, fake_clock, caplog):
    base = ["--model=TIGER"] + patch_gr(monkeypatch)
    # after epoch k: 12k s spent, the next needs 12 + 2 (test): k = 1, 2, 3 fit in 50 s (26, 38, 50), k = 4 not (62)
    with caplog.at_level(logging.INFO):
        assert run_recbole_gflowgr.main(base + with_args(TINY_GR, ["--epochs=20", "--time_budget_s=50"])) == 0
    row = rows()[-1]
    assert (row["epochs_trained"], len(row["valid_curve"])) == (4, 4)
    assert (row["stopped_by"], row["stopped_early"]) == ("time_budget", False)
    assert row["config"]["time_budget_s"] == 50 and set(row["test"]) >= {"ndcg@10", "recall@10"}
    assert 1 <= row["best_epoch"] <= 4
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "time budget: 48 of 50 s spent" in log and "training ends after epoch 3" in log

    # the cap ends it first (3 epochs fit in 1000 s): stopped_by "epochs"
    assert run_recbole_gflowgr.main(base + with_args(TINY_GR, ["--epochs=3", "--time_budget_s=1000"])) == 0
    row = rows()[-1]
    assert (row["epochs_trained"], row["stopped_by"], row["stopped_early"]) == (3, "epochs", False)


def test_early_stopping_takes_precedence_at_the_same_validation(monkeypatch, fake_clock):
    import recbole.trainer.trainer as rt

    calls = []
    monkeypatch.setattr(rt, "calculate_valid_score", lambda *a, **k: calls.append(1) or 1.0 / len(calls))
    base = ["--model=TIGER"] + patch_gr(monkeypatch)
    # best at 1, stopping_step 2: early stopping fires after epoch 4, where the budget (62 > 50) would too
    assert run_recbole_gflowgr.main(base + with_args(TINY_GR, ["--epochs=20", "--stopping_step=2",
                                                               "--time_budget_s=50"])) == 0
    row = rows()[-1]
    assert (row["epochs_trained"], row["best_epoch"], row["stopped_by"], row["stopped_early"]) == \
        (4, 1, "early_stopping", True)


def test_finetuning_reads_finetune_time_budget_s(monkeypatch, fake_clock):
    base = ["--model=TIGER", "--finetune=sft-continued"] + patch_gr(monkeypatch)
    # the SFT run first (2 epochs, time_budget_s 0: no budget); then the control within 26 s: after epoch 1 of
    # fine-tuning 12 s spent, 12 + 14 = 26 fits; after epoch 2, 24 + 14 = 38 does not
    args = with_args(TINY_GR, ["--epochs=2", "--finetune_epochs=20", "--finetune_time_budget_s=26"])
    assert run_recbole_gflowgr.main(base + args) == 0
    sft, control = rows()[-2:]
    assert (sft["finetune"], sft["epochs_trained"], sft["stopped_by"]) == ("sft", 2, "epochs")
    assert (control["finetune"], control["epochs_trained"], control["stopped_by"]) == \
        ("sft-continued", 2, "time_budget")
    assert control["config"]["time_budget_s"] == 26  # what the fine-tuning run read, as epochs = finetune_epochs


def test_negative_budget_is_one_error_line(monkeypatch, capsys):
    base = ["--model=TIGER"] + patch_gr(monkeypatch)
    assert run_recbole_gflowgr.main(base + with_args(TINY_GR, ["--time_budget_s=-5"])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: time_budget_s=-5: expected a float >= 0") and "\n" not in err, err
