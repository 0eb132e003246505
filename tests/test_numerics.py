"""Numerics: flow losses finite for extreme rewards over long training, log Z divergence reported, a NaN loss stops
the run with a clear error and keeps the last good checkpoint."""
import glob
import json
import logging
import math
import os
import types

import pytest
import torch

import run_recbole_gflowgr
from gr_helpers import TINY_GR, patch_gr, with_args
from recbole_gflowgr.foundation.errors import TrainingError
from recbole_gflowgr.finetune.gflowgr import (
    comprehensive_reward, detailed_balance, subtrajectory_balance, trajectory_balance,
)
from recbole_gflowgr.trainer.numerics import check_log_z


def rows(path="res/tiny.jsonl"):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("loss_name", ["tb", "db", "subtb"])
def test_flow_losses_stay_finite_over_long_training_with_extreme_rewards(loss_name):
    """float32, rewards from 1e-30 to 1e30 on a 3 x 3 tree, 1500 Adam steps at lr 0.3: every loss and gradient stays finite and
    the learned log Z (or log F(s_0)) reaches log sum R."""
    torch.manual_seed(0)
    log_r = torch.linspace(-69.0, 69.0, 9)  # (9,) log rewards of the leaves
    root = torch.zeros(3, requires_grad=True)  # logits at s_0
    child = torch.zeros(3, 3, requires_grad=True)  # logits at s_1 = (a,)
    log_z = torch.zeros((), requires_grad=True)
    log_f1 = torch.zeros(3, requires_grad=True)  # log F((a,))
    params = [root, child, log_z, log_f1]
    opt = torch.optim.Adam(params, lr=0.3)
    a, b = torch.arange(9) // 3, torch.arange(9) % 3
    for _ in range(1500):
        log_pf = torch.stack([torch.log_softmax(root, 0)[a], torch.log_softmax(child, 1)[a, b]], 1)  # (9, 2)
        log_f = torch.stack([log_z.expand(9), log_f1[a]], 1)  # (9, 2)
        if loss_name == "tb":
            loss = trajectory_balance(log_z.expand(9), log_pf, log_r)
        elif loss_name == "db":
            loss = detailed_balance(log_f, log_pf, log_r)
        else:
            loss = subtrajectory_balance(log_f, log_pf, log_r, lamda=2.0)
        assert torch.isfinite(loss).all()
        opt.zero_grad()
        loss.mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        opt.step()
    assert abs(log_z.item() - torch.logsumexp(log_r, 0).item()) < 0.05


def test_reward_exponent_that_overflows_the_reward_keeps_log_reward_and_losses_finite():
    is_pos = torch.tensor([[True, False]])
    codes = torch.tensor([[[1, 2], [1, 3]]])
    reward, log_r, _ = comprehensive_reward(is_pos, torch.tensor([[1.0, 0.0]]), codes, codes[:, 0], exponent=1e4)
    assert torch.isinf(reward[0, 0]) and torch.isfinite(log_r).all()  # R = 3 ** 1e4 overflows, log R does not
    loss = trajectory_balance(torch.zeros(2), torch.full((2, 2), -1.0), log_r[0])
    assert torch.isfinite(loss).all()


class _Logger:
    def __init__(self):
        self.warnings, self.errors = [], []

    def warning(self, message):
        self.warnings.append(message)

    def error(self, message):
        self.errors.append(message)


def fake_trainer(bound=100.0, epoch=3):
    config = {"gflowgr_logz_bound": bound, "model": "TIGER", "dataset": "tiny", "finetune": "gflowgr-tb"}
    return types.SimpleNamespace(config=config, current_epoch=epoch, logger=_Logger(),
                                 last_checkpoint_file="missing-last.pth", saved_model_file="missing.pth")


def test_log_z_beyond_the_bound_warns_once_per_epoch_and_non_finite_stops():
    trainer = fake_trainer()
    assert check_log_z(trainer, torch.tensor([1.0, -50.0])) == 50.0 and trainer.logger.warnings == []
    check_log_z(trainer, torch.tensor([-250.0]))
    check_log_z(trainer, torch.tensor([300.0]))
    (warning,) = trainer.logger.warnings
    assert "|log Z| = 250" in warning and "gflowgr_logz_bound=100.0" in warning and "gflowgr_logz_lr" in warning
    trainer.current_epoch = 4
    check_log_z(trainer, torch.tensor([300.0]))
    assert len(trainer.logger.warnings) == 2
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(TrainingError) as err:
            check_log_z(trainer, torch.tensor([0.0, bad]))
        message = str(err.value)
        assert "log Z is" in message and "epoch 4" in message and "gflowgr_logz_lr" in message
        assert "finetune=gflowgr-tb" in message and "\n" not in message and trainer.logger.errors[-1] == message


def nan_from_epoch(monkeypatch, epoch, target):
    """``target`` (class, method name) returns NaN from training epoch ``epoch`` on."""
    from recbole_gflowgr.trainer.base import TrainerMixin

    state = {"epoch": -1}
    train_epoch = TrainerMixin._train_epoch

    def tracking(self, train_data, epoch_idx, *args, **kwargs):
        state["epoch"] = epoch_idx
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    cls, name = target
    original = getattr(cls, name)

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        if state["epoch"] >= epoch:
            return tuple(o * math.nan for o in out) if isinstance(out, tuple) else out * math.nan
        return out

    monkeypatch.setattr(TrainerMixin, "_train_epoch", tracking)
    monkeypatch.setattr(cls, name, poisoned)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(monkeypatch, capsys):
    from recbole_gflowgr.model.tiger import TIGER

    args = ["--model=TIGER"] + patch_gr(monkeypatch) + with_args(TINY_GR, ["--epochs=3"])
    with monkeypatch.context() as m:
        nan_from_epoch(m, 1, (TIGER, "calculate_loss"))
        assert run_recbole_gflowgr.main(args) == 2
    err = capsys.readouterr().err.strip()
    (last,) = glob.glob("saved/TIGER-tiny-sft-seed42-*-last.pth")
    assert err.startswith("error: training loss is nan in epoch 1 (TIGER on 'tiny'): training stopped; ")
    assert f"the last good checkpoint {last} (epoch 0)" in err and "lower learning_rate" in err and "\n" not in err
    assert rows() == []  # no result row for a failed run
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["state_dict"].values()
                                       if v.is_floating_point())
    assert os.path.isfile(state["resume"]["best_file"])
    # the kept checkpoint is a good one: --resume (the fault gone) finishes the run
    assert run_recbole_gflowgr.main(args + ["--resume=True"]) == 0
    assert rows()[0]["epochs"] == 3 and not glob.glob("saved/*-last.pth")


def test_non_finite_log_z_in_gflowgr_is_a_clear_error(monkeypatch, capsys):
    from recbole_gflowgr.finetune.gflowgr.heads import FlowHeads

    args = ["--model=TIGER", "--finetune=gflowgr-tb"] + patch_gr(monkeypatch) + with_args(TINY_GR, ["--finetune_epochs=2"])
    with monkeypatch.context() as m:
        nan_from_epoch(m, 1, (FlowHeads, "log_z"))
        assert run_recbole_gflowgr.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: GFlowGR's log Z is nan in epoch 1 (TIGER on 'tiny', finetune=gflowgr-tb)")
    assert "gflowgr_logz_lr" in err and "last good checkpoint" in err and "\n" not in err
    assert [r["finetune"] for r in rows()] == ["sft"]


def test_log_z_drift_is_reported_in_the_run_log(monkeypatch, caplog):
    args = ["--model=TIGER", "--finetune=gflowgr-db"] + patch_gr(monkeypatch) + TINY_GR
    with caplog.at_level(logging.WARNING):
        assert run_recbole_gflowgr.main(args + ["--gflowgr_logz_bound=1e-9"]) == 0
    assert any("exceeds gflowgr_logz_bound=1e-09" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert run_recbole_gflowgr.main(args) == 0  # the default bound: no warning on a healthy run
    assert not any("gflowgr_logz_bound" in r.getMessage() for r in caplog.records)
    first, second = rows()[1:]
    assert first["config_hash"] == second["config_hash"]  # the bound only monitors: same run
