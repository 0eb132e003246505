"""benchmarks/gpu/beauty_seed42.py (the one-call GPU run of amazon-beauty seed 42): its time estimate, its plan, and
the archive it leaves, as merge.py takes it. The run itself needs a GPU (or minutes of CPU with TINY=1): not here."""
import importlib.util
import json
import os
import subprocess
import tarfile

import pytest

from conftest import REPO


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", "gpu", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script, merge = load("beauty_seed42"), load("merge")


def test_simulate_follows_the_trainers_budget_rule():
    # as tests/test_budget.py: 10 s epochs, 2 s validations, 50 s: 4 epochs (48 s) and the test evaluation (2 s)
    assert script.simulate(0, 10, 2, 50, cap=20) == (4, 50)
    assert script.simulate(0, 10, 2, 50, cap=3) == (3, 38)  # the cap first
    assert script.simulate(100, 10, 2, 50, cap=20) == (1, 114)  # the first epoch always runs


def test_plan_fits_the_call_and_says_its_costs_are_assumed():
    table, source = script.costs(script.make_grid(False, "scratch"), [], tiny=False)
    lines, budgets, end = script.plan(table, source, tiny=False, spent_s=20)
    assert set(source.values()) == {"assumed"} and all(f in "\n".join(lines) for f in ("sft-continued", "gflowgr-tb"))
    assert budgets["sft"] == script.SFT_S and end <= script.TOTAL_S
    sft_end = script.simulate(table["setup"], table["sft"], table["valid"], script.SFT_S, 200)[1]
    # what is left of the call, the cells' time outside their budgets' clocks (before and after) taken off
    assert budgets["finetune"] == int(script.TOTAL_S - 20 - sft_end - 2 * script.OUTSIDE_S - script.PACK_S)
    assert any(line.startswith("  1. SFT, time_budget_s=240") for line in lines) and "never measured" in lines[0]


def test_measured_epoch_times_of_earlier_gpu_rows_replace_the_assumption():
    grid = script.make_grid(False, "scratch")
    rows = [{"experiment": "beauty-gpu", "finetune": "gflowgr-tb", "epoch_s": s, "device": "NVIDIA H200"}
            for s in (40.0, 60.0)]
    rows.append({"experiment": "beauty-gpu", "finetune": "gflowgr-tb", "epoch_s": 999.0, "device": "cpu (1 threads)"})
    table, source = script.costs(grid, rows, tiny=False)
    # measured while two cells shared the GPU: the cost of one alone is taken as that / SHARED
    assert table["gflowgr-tb"] * script.SHARED == pytest.approx(50.0) and source["gflowgr-tb"] == "measured (2 rows)"
    assert (table["sft"], source["sft"]) == (script.ASSUMED["sft"], "assumed")


def test_tiny_grid_is_the_same_cells_with_everything_in_its_scratch_folder(tmp_path):
    grid = script.make_grid(True, str(tmp_path))
    assert (grid["datasets"], grid["models"], grid["seeds"]) == (["gpu-tiny"], ["TIGER"], [42])
    assert grid["finetunes"] == ["sft", "sft-continued", "gflowgr-tb"] and grid["name"] == "beauty-gpu-tiny"
    config = grid["config"]
    assert (config["checkpoint_dir"], config["data_path"]) == (str(tmp_path / "saved"), str(tmp_path / "dataset"))
    assert config["collaborative_args"]["results_dir"] == str(tmp_path / "results")  # the CM's row too
    inter = json.load(open(os.path.join(script.tiny_dataset(str(tmp_path / "data")), "gpu-tiny.inter.json")))
    assert len(inter) == 300 and all(6 <= len(seq) <= 12 and len(set(seq)) == len(seq) for seq in inter.values())


def test_dry_run_prints_the_plan_and_runs_nothing(capsys, tmp_path):
    assert script.main(["--dry_run", f"--out={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("time estimate (one H200-class GPU") and "1. SFT, time_budget_s=240" in out
    assert "bundle.sh amazon-beauty" in out  # this checkout has no converted amazon-beauty: said, not fatal
    assert not (tmp_path / "out").exists() and not os.path.exists("results")


def test_the_shell_command_dry_run_from_the_repo_root(tmp_path):
    env = dict(os.environ, DRY="1", OUT=str(tmp_path / "out"), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "benchmarks/gpu/beauty_seed42.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "3. pack results/" in proc.stdout and (tmp_path / "out" / "run.log").read_text() == proc.stdout


def test_the_archive_is_what_merge_takes(tmp_path):
    results = tmp_path / "work" / "results"
    (results / "logs" / "ml-100k").mkdir(parents=True)
    (results / ".running").mkdir()
    rows = [{"model": "TIGER", "finetune": f, "dataset": "ml-100k", "experiment": "beauty-gpu-tiny"}
            for f in ("sft", "gflowgr-tb")]
    (results / "ml-100k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (results / "logs" / "ml-100k" / "TIGER-x.log").write_text("log\n")
    (results / ".running" / "abc.pid").write_text("1")
    archive = script.pack(str(results), str(tmp_path / "out"))
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["results", "results/.running", "results/logs", "results/logs/ml-100k",
                                          "results/logs/ml-100k/TIGER-x.log", "results/ml-100k.jsonl"]
    here = tmp_path / "here"
    assert merge.main([str(tmp_path / "out"), f"--results={here}"]) == 0  # the device's files_at folder
    assert merge.merge(archive, str(here)) == {}  # merged twice: nothing new
    assert [json.loads(line)["finetune"] for line in (here / "ml-100k.jsonl").read_text().splitlines()] == \
        ["sft", "gflowgr-tb"]
    assert (here / "logs" / "ml-100k" / "TIGER-x.log").is_file() and not (here / ".running").exists()
