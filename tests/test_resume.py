"""Resume (a killed run continues from its last checkpoint to the same result), determinism, atomic checkpoints."""
import filecmp
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

import run_recbole_gflowgr
from conftest import REPO
from gr_helpers import TINY_GR, patch_gr, with_args
from recbole_gflowgr.foundation import utils
from recbole_gflowgr.trainer import resume
from recbole_gflowgr.trainer.base import TrainerMixin

EPOCHS = ["--epochs=3", "--finetune_epochs=3", "--stopping_step=10"]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the run catches it."""


def rows(path="res/tiny.jsonl"):
    with open(path) as f:
        return [json.loads(line) for line in f]


def kill_in_epoch(monkeypatch, epoch, finetune=None, after_batches=1):
    """The run dies in ``epoch`` after ``after_batches`` optimiser steps (weights in memory are then past the last
    checkpoint), only in the run whose ``finetune`` is given (default: any)."""
    original, seen = TrainerMixin._check_nan, []

    def check(self, loss):
        if self.current_epoch == epoch and finetune in (None, self.config["finetune"]):
            seen.append(1)
            if len(seen) > after_batches:
                raise Killed()
        return original(self, loss)

    monkeypatch.setattr(TrainerMixin, "_check_nan", check)


def keep_last(monkeypatch):
    """Keep the last checkpoint after the row is written, to compare the final training state of two runs."""
    monkeypatch.setattr(TrainerMixin, "discard_last", lambda self: None)


def last_file(folder, method="sft"):
    (path,) = glob.glob(os.path.join(folder, f"TIGER-tiny-{method}-seed*-last.pth"))
    return path


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a, b):
    """Model (incl. log Z / flow heads), optimizer (incl. log Z's group), counters and RNG states are identical."""
    assert a.keys() == b.keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert (a["epoch"], a["cur_step"], a["best_valid_score"]) == (b["epoch"], b["cur_step"], b["best_valid_score"])
    ra, rb = a["resume"], b["resume"]
    assert ra["best_valid_result"] == rb["best_valid_result"] and len(ra["epoch_times"]) == len(rb["epoch_times"])
    assert torch.equal(ra["rng"]["torch"], rb["rng"]["torch"]) and ra["rng"]["python"] == rb["rng"]["python"]
    assert torch.equal(ra["loader_rng"], rb["loader_rng"])
    if ra["generator"] is not None:
        assert torch.equal(ra["generator"], rb["generator"])


@pytest.mark.parametrize("method,extra", [("sft", []), ("gflowgr-tb", []), ("grpo", []),
                                          ("sft", ["--eval_step=2"])])  # epoch 0 unvalidated: saved when 1 starts
def test_killed_run_resumes_to_the_uninterrupted_result(monkeypatch, method, extra):
    args = ["--model=TIGER", f"--finetune={method}"] + patch_gr(monkeypatch) + with_args(TINY_GR, EPOCHS + extra)
    keep_last(monkeypatch)
    assert run_recbole_gflowgr.main(args + ["--checkpoint_dir=whole"]) == 0
    whole = rows()[-1]

    with monkeypatch.context() as m:
        kill_in_epoch(m, 1, finetune=method)
        with pytest.raises(Killed):
            run_recbole_gflowgr.main(args + ["--checkpoint_dir=cut"])
    n_rows = len(rows())
    killed = load(last_file("cut", method))
    assert killed["epoch"] == 0 and not killed["resume"]["finished"]
    assert not glob.glob("cut/**/*.tmp*", recursive=True)

    assert run_recbole_gflowgr.main(args + ["--checkpoint_dir=cut", "--resume=True"]) == 0
    resumed = rows()[-1]
    assert len(rows()) == n_rows + 1
    assert (resumed["test"], resumed["valid"], resumed["epochs"]) == (whole["test"], whole["valid"], whole["epochs"])
    assert resumed["config_hash"] == whole["config_hash"]
    # the row's wall time counts the killed process up to its last checkpoint
    assert killed["resume"]["elapsed_s"] > 0 and "resumed_s" not in whole
    assert resumed["resumed_s"] == round(killed["resume"]["elapsed_s"], 2)  # tiny runs: may round to 0.0
    assert resumed["wall_s"] > killed["resume"]["elapsed_s"]
    assert_same_state(load(last_file("whole", method)), load(last_file("cut", method)))
    best_whole, best_cut = load(whole["checkpoint"]), load(resumed["checkpoint"])
    for key in best_whole["state_dict"]:
        assert torch.equal(best_whole["state_dict"][key], best_cut["state_dict"][key]), key


def test_resume_after_training_ended_only_evaluates_the_best_checkpoint(monkeypatch):
    args = ["--model=TIGER"] + patch_gr(monkeypatch) + with_args(TINY_GR, EPOCHS)
    assert run_recbole_gflowgr.main(args + ["--checkpoint_dir=whole"]) == 0
    with monkeypatch.context() as m:  # dies after the last epoch, before the result row is written

        def dies(*args, **kwargs):
            raise Killed()

        m.setattr("recbole_gflowgr.quick_start.make_row", dies)
        with pytest.raises(Killed):
            run_recbole_gflowgr.main(args + ["--checkpoint_dir=cut"])
    assert load(last_file("cut"))["resume"]["finished"]
    trained = []
    with monkeypatch.context() as m:
        original = TrainerMixin._train_epoch
        m.setattr(TrainerMixin, "_train_epoch", lambda self, *a, **k: trained.append(1) or original(self, *a, **k))
        assert run_recbole_gflowgr.main(args + ["--checkpoint_dir=cut", "--resume=True"]) == 0
    first, resumed = rows()
    assert not trained and resumed["test"] == first["test"] and resumed["epochs"] == 3
    assert not glob.glob("cut/*-last.pth")  # the row is written: the last checkpoint is gone


def test_resume_without_a_checkpoint_starts_from_scratch(monkeypatch):
    args = ["--model=TIGER"] + patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main(args + ["--resume"]) == 0  # the bare flag = --resume=True
    assert rows()[0]["epochs"] == 1 and rows()[0]["config"]["resume"] is True and not glob.glob("saved/*-last.pth")


DRIVER = """
import sys, time
sys.path[:0] = [{tests!r}, {repo!r}]
import pytest
import recbole_gflowgr
import run_recbole_gflowgr
from gr_helpers import patch_gr
from recbole_gflowgr.trainer.base import TrainerMixin

original = TrainerMixin._train_epoch
def slow(self, *args, **kwargs):  # time for the test to kill the process in the middle of training
    time.sleep(0.4)
    return original(self, *args, **kwargs)
TrainerMixin._train_epoch = slow
sys.exit(run_recbole_gflowgr.main(patch_gr(pytest.MonkeyPatch()) + sys.argv[1:]))
"""


def test_sigkilled_process_resumes_to_the_uninterrupted_result(monkeypatch):
    args = ["--model=TIGER"] + with_args(TINY_GR, ["--epochs=6", "--stopping_step=10"])
    with open("driver.py", "w") as f:
        f.write(DRIVER.format(tests=os.path.join(REPO, "tests"), repo=REPO))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "driver.py"] + args + ["--checkpoint_dir=cut"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not glob.glob("cut/*-last.pth") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup, no exception handler runs
    proc.wait()
    assert not os.path.exists("res"), "the process ended before it could be killed"
    assert load(last_file("cut"))["epoch"] < 5

    full = patch_gr(monkeypatch) + args
    assert run_recbole_gflowgr.main(full + ["--checkpoint_dir=cut", "--resume=True"]) == 0
    assert run_recbole_gflowgr.main(full + ["--checkpoint_dir=whole"]) == 0
    resumed, whole = rows()
    assert (resumed["test"], resumed["valid"], resumed["epochs"]) == (whole["test"], whole["valid"], 6)


def test_same_seed_and_config_give_identical_results(monkeypatch):
    base = ["--model=TIGER"] + patch_gr(monkeypatch) + with_args(TINY_GR, ["--epochs=2", "--finetune_epochs=2"])
    assert run_recbole_gflowgr.main(base + ["--checkpoint_dir=a"]) == 0
    assert run_recbole_gflowgr.main(base + ["--checkpoint_dir=b"]) == 0
    sft_a, sft_b = rows()
    assert (sft_a["test"], sft_a["valid"]) == (sft_b["test"], sft_b["valid"])
    wa, wb = load(sft_a["checkpoint"])["state_dict"], load(sft_b["checkpoint"])["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for _ in range(2):  # GFlowGR twice from the same (cached) SFT checkpoint
        assert run_recbole_gflowgr.main(base + ["--checkpoint_dir=a", "--finetune=gflowgr-tb"]) == 0
    tb_a, tb_b = rows()[2:]
    assert tb_a["finetune"] == "gflowgr-tb" and (tb_a["test"], tb_a["valid"]) == (tb_b["test"], tb_b["valid"])
    assert run_recbole_gflowgr.main(base + ["--checkpoint_dir=a", "--finetune=gflowgr-tb", "--seed=7"]) == 0
    assert rows()[-1]["test"] != tb_a["test"] or rows()[-1]["valid"] != tb_a["valid"]  # the seed matters


def test_checkpoints_are_written_atomically(monkeypatch):
    utils.atomic_save({"x": torch.ones(3)}, "ck/run-last.pth")
    real_save = torch.save

    def dies_halfway(obj, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise Killed()

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(Killed):
        utils.atomic_save({"x": torch.zeros(3)}, "ck/run-last.pth")
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir("ck") == ["run-last.pth"] and torch.equal(load("ck/run-last.pth")["x"], torch.ones(3))


def test_run_identity_ignores_paths_and_resume_but_not_hyperparameters_or_seed(monkeypatch):
    from recbole_gflowgr.quick_start import load_config

    args = patch_gr(monkeypatch) + TINY_GR
    ident = lambda *extra: resume.run_id(load_config("TIGER", None, cmd_args=with_args(args, extra)))  # noqa: E731
    assert ident() == ident("--resume=True", "--checkpoint_dir=x", "--results_dir=y", "--show_progress=True")
    assert len({ident(), ident("--seed=1"), ident("--learning_rate=0.5"), ident("--finetune=gflowgr-tb"),
                ident("--pretrained_checkpoint=p.pth")}) == 5
    assert ident().startswith("TIGER-tiny-sft-seed42-")
    # a fine-tuning key does nothing to an SFT run: its id (and last checkpoint) survive a changed default
    assert ident("--gflowgr_logz=global", "--dpo_beta=0.5", "--finetune_learning_rate=0.01") == ident()
    tb = ("--finetune=gflowgr-tb",)
    assert ident(*tb, "--gflowgr_logz=global") != ident(*tb)


def test_a_corrupt_last_checkpoint_is_a_clear_error(monkeypatch, capsys):
    args = ["--model=TIGER"] + patch_gr(monkeypatch) + TINY_GR
    from recbole_gflowgr.quick_start import load_config

    path = os.path.join("saved", resume.run_id(load_config("TIGER", None, cmd_args=args[1:])) + resume.LAST_SUFFIX)
    os.makedirs("saved")
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    assert run_recbole_gflowgr.main(args + ["--resume=True"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: resume: the last checkpoint {path} is not a readable checkpoint")
    assert err.endswith("delete it to start the run over") and "\n" not in err
    assert not os.path.exists("res")


def test_a_missing_best_checkpoint_is_a_clear_error(monkeypatch, capsys):
    args = ["--model=TIGER"] + patch_gr(monkeypatch) + with_args(TINY_GR, EPOCHS)
    with monkeypatch.context() as m:
        kill_in_epoch(m, 1)
        with pytest.raises(Killed):
            run_recbole_gflowgr.main(args)
    last = last_file("saved")
    os.remove(load(last)["resume"]["best_file"])
    assert run_recbole_gflowgr.main(args + ["--resume=True"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: resume: cannot resume from {last}: its best checkpoint saved/TIGER-")
    assert err.endswith(f"is missing; delete {last} to start the run over") and not os.path.exists("res")


def test_a_cut_off_cell_packed_and_restored_on_a_fresh_clone_resumes_to_the_uninterrupted_result(monkeypatch):
    from recbole_gflowgr import artifacts

    args = (["--model=TIGER", "--experiment_cell=cell1"] + patch_gr(monkeypatch)
            + with_args(TINY_GR, EPOCHS + ["--checkpoint_dir=saved"]))
    with monkeypatch.context() as m:
        kill_in_epoch(m, 1)
        with pytest.raises(Killed):
            run_recbole_gflowgr.main(args)
    os.makedirs("res", exist_ok=True)
    packed = f"res/artifacts/resume/{os.path.basename(last_file('saved'))}"
    assert artifacts.pack("res", checkpoint_dir="saved") == [packed]
    shutil.rmtree("saved")  # the next session's machine: only what was committed (res/) is there
    restored = artifacts.restore("res", checkpoint_dir="saved", say=lambda line: None)
    assert len(restored) == 2 and os.path.isfile(last_file("saved"))
    assert filecmp.cmp(packed, last_file("saved"), shallow=False)  # same checkpoint_dir: restored byte for byte
    assert run_recbole_gflowgr.main(args + ["--resume=True"]) == 0
    resumed = rows()[-1]
    assert resumed["resumed_s"] > 0 and resumed["epochs"] == 3 and not glob.glob("saved/*-last.pth")
    assert run_recbole_gflowgr.main(with_args(args, ["--checkpoint_dir=whole"])) == 0
    whole = rows()[-1]
    assert (resumed["test"], resumed["valid"]) == (whole["test"], whole["valid"])
    artifacts.pack("res", checkpoint_dir="saved", say=lambda line: None)  # the cell has its row: unpacked again
    assert os.listdir("res/artifacts/resume") == []
