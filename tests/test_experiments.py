"""Experiment runner (grid expansion, resume, budget, a real subprocess cell) and the grid tables / sweep plots."""
import os

import pytest
import yaml

from recbole_gflowgr import analysis, experiments
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.trainer.results import append_row, read_rows
from test_foundation import tiny_letter


def write_grid(path="grid.yaml", **keys):
    with open(path, "w") as f:
        yaml.safe_dump(keys, f, sort_keys=False)
    return experiments.load_grid(path)


def fake_row(cell, test=0.1, valid=0.2, wall=10.0):
    metrics = {m: test for m in ("recall@5", "recall@10", "ndcg@5", "ndcg@10")}
    return {"model": cell["model"], "finetune": cell["finetune"] if cell["model"] in ("TIGER", "LETTER") else "none",
            "dataset": cell["dataset"], "seed": cell["seed"], "test": metrics,
            "valid": {k: valid for k in metrics}, "wall_s": wall, "device": "cpu", "commit": "x",
            "config_hash": cell.key, "experiment_cell": cell.key, "experiment_variant": cell["variant"] or None}


def fake_launcher(calls, **row_kw):
    def launch(cell, results_dir, log_dir, threads):
        calls.append(cell.label)
        row = fake_row(cell, **row_kw)
        append_row(row, results_dir)
        return row, 1.0, "fake.log"
    return launch


def test_expand_orders_sft_first_and_shares_sft_across_finetuning_variants():
    grid = write_grid(datasets=["d"], models=["TIGER"], baselines=["SASRec"], finetunes=["sft", "gflowgr-tb"],
                      seeds=[1, 2], variants={"lam": {"gflowgr_lambda": 0.5}, "wide": {"d_model": 32}})
    cells = experiments.expand(grid)
    labels = [c.label for c in cells]
    # per seed: SASRec, the SFT shared by 'lam' (a fine-tuning key only), the SFT of 'wide', two GFlowGR cells
    assert labels[:5] == ["d SASRec none seed=1", "d TIGER sft seed=1", "d TIGER sft [wide] seed=1",
                          "d TIGER gflowgr-tb [lam] seed=1", "d TIGER gflowgr-tb [wide] seed=1"]
    assert len(cells) == 10 and len({c.key for c in cells}) == 10
    assert labels[5].endswith("seed=2")


def test_the_control_is_one_cell_per_seed_across_method_variants():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb", "sft-continued"], seeds=[1, 2],
                      variants={"full": {}, "no-cm": {"gflowgr_reward_cm": False}, "lam": {"gflowgr_lambda": 0.5},
                                "wide": {"d_model": 32}, "ft": {"finetune_epochs": 3}},
                      sweep={"gflowgr_n_aug": [1, 2]})
    control = [c for c in experiments.expand(grid) if c["finetune"] == "sft-continued"]
    # per seed: the plain control (every gflowgr_* variant is that run), and one per backbone / finetune_* change
    assert [c.label for c in control if c["seed"] == 1] == [
        "d TIGER sft-continued [full] seed=1", "d TIGER sft-continued [wide] seed=1",
        "d TIGER sft-continued [ft] seed=1"]
    assert len(control) == 6 and len({c.key for c in control}) == 6
    gfn = [c for c in experiments.expand(grid) if c["finetune"] == "gflowgr-tb"]
    assert len({c.key for c in gfn}) == 2 * 7  # the method's own variants stay apart: full, no-cm, lam, wide, ft, N=1, N=2


def test_classic_cells_take_baseline_config_files_not_the_backbone_config(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text("epochs: 3\n")
    grid = write_grid(datasets=["d"], models=["TIGER"], baselines=["GRU4Rec"], finetunes=["sft"], seeds=[1],
                      config_files=[str(small)])
    classic, sft = experiments.expand(grid)
    assert (classic["model"], classic["config_files"], sft["config_files"]) == ("GRU4Rec", [], [str(small)])
    assert not any(a.startswith("--config_files") for a in experiments.command(classic, "cell.yaml"))
    assert f"--config_files={small}" in experiments.command(sft, "cell.yaml")
    other = tmp_path / "classic.yaml"
    other.write_text("epochs: 300\n")
    grid = write_grid(datasets=["d"], models=["TIGER"], baselines=["GRU4Rec"], finetunes=["sft"], seeds=[1],
                      config_files=[str(small)], baseline_config_files=[str(other)])
    classic2, sft2 = experiments.expand(grid)
    assert classic2["config_files"] == [str(other)] and classic2.key != classic.key and sft2.key == sft.key


def test_sweep_makes_one_variant_per_value_one_key_at_a_time():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[1],
                      sweep={"gflowgr_n_aug": [1, 2], "gflowgr_lambda": [0.1, 1]})
    variants = [c["variant"] for c in experiments.expand(grid)]
    assert variants == ["gflowgr_n_aug=1", "gflowgr_n_aug=2", "gflowgr_lambda=0.1", "gflowgr_lambda=1"]


def test_a_variant_with_default_values_is_the_plain_cell_and_runs_once():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[1],
                      variants={"full": {}, "same": {"gflowgr_lambda": 0.1}},  # 0.1: gflowgr.yaml's default
                      sweep={"gflowgr_lambda": [0.1, 1]})
    cells = [c for c in experiments.expand(grid) if c["finetune"] != "sft"]
    keys = {c["variant"]: c.key for c in cells}
    assert keys["full"] == keys["same"] == keys["gflowgr_lambda=0.1"] != keys["gflowgr_lambda=1"]
    calls = []
    experiments.run_grid(grid, "res", launcher=fake_launcher(calls))
    assert calls == ["d TIGER gflowgr-tb [full] seed=1", "d TIGER gflowgr-tb [gflowgr_lambda=1] seed=1"]
    table = analysis.variant_table(grid, "res")  # the one run is shown under each of its labels
    assert all(f"| gflowgr-tb | {v} | 0.1000 |" in table for v in ("full", "same", "gflowgr_lambda=0.1"))


def test_runner_resumes_skipping_cells_with_rows():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["sft", "dpo"], seeds=[1, 2])
    calls = []
    experiments.run_grid(grid, "res", launcher=fake_launcher(calls), only=("sft", "2"))
    assert calls == ["d TIGER sft seed=2"]
    experiments.run_grid(grid, "res", launcher=fake_launcher(calls), only=("sft",))
    assert calls == ["d TIGER sft seed=2", "d TIGER sft seed=1"]
    calls.clear()
    report = experiments.run_grid(grid, "res", launcher=fake_launcher(calls))
    assert calls == ["d TIGER dpo seed=1", "d TIGER dpo seed=2"] and len(report["done"]) == 2
    calls.clear()
    report = experiments.run_grid(grid, "res", launcher=fake_launcher(calls))
    assert calls == [] and len(report["done"]) == 4


def test_time_estimates_come_from_rows_of_the_same_kind_of_device():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["sft"], seeds=[1])
    (cell,) = experiments.expand(grid)
    history = [dict(fake_row(cell, wall=900.0), device="cpu (1 threads)"),
               dict(fake_row(cell, wall=60.0), device="NVIDIA H100 80GB HBM3"),
               dict(fake_row(cell, wall=100.0), device="NVIDIA H100 80GB HBM3")]
    assert experiments.estimate(cell, history, "cpu") == 900.0
    assert experiments.estimate(cell, history, "gpu") == 80.0
    assert experiments.estimate(cell, history[:1], "gpu") is None  # CPU rows alone: no GPU estimate


def test_time_budget_starts_no_cell_that_would_overrun_and_failed_sft_blocks_its_finetuning():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["sft", "dpo"], seeds=[1])
    cells = experiments.expand(grid)
    append_row(dict(fake_row(cells[0], wall=500.0), experiment_cell="other"), "res")  # history: sft takes 500 s
    calls = []
    report = experiments.run_grid(grid, "res", launcher=fake_launcher(calls), time_budget=100)
    assert calls == []  # sft's 500 s estimate exceeds the budget, and dpo needs that sft
    assert [c.label for c in report["skipped"]] == ["d TIGER sft seed=1", "d TIGER dpo seed=1"]
    report = experiments.run_grid(grid, "res", launcher=fake_launcher(calls), time_budget=1000, only=("dpo",))
    assert calls == ["d TIGER sft seed=1", "d TIGER dpo seed=1"]  # --only=dpo brings its SFT cell along

    def failing(cell, results_dir, log_dir, threads):
        calls.append(cell.label)
        return None, 1.0, "x.log"
    calls.clear()
    report = experiments.run_grid(grid, "res2", launcher=failing)
    assert calls == ["d TIGER sft seed=1"] and [c.label for c in report["skipped"]] == ["d TIGER dpo seed=1"]


def test_a_cell_run_by_another_live_process_is_left_to_it():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["sft"], seeds=[1, 2])
    first = experiments.expand(grid)[0]
    os.makedirs(os.path.join("res", ".running"))
    with open(os.path.join("res", ".running", f"{first.key}.pid"), "w") as f:
        f.write("1")  # pid 1 is alive
    calls = []
    report = experiments.run_grid(grid, "res", launcher=fake_launcher(calls))
    assert calls == ["d TIGER sft seed=2"] and [c.label for c in report["skipped"]] == ["d TIGER sft seed=1"]
    assert os.listdir(os.path.join("res", ".running")) == [f"{first.key}.pid"]  # ours released, theirs kept


def test_a_cell_finished_by_another_runner_after_our_start_is_not_run_again():
    """Two runner commands on one grid: a cell that the other one finished after ours read results/ (its claim
    already released) is found done when ours claims it, and is not run twice."""
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["sft"], seeds=[1, 2])
    second = experiments.expand(grid)[1]
    calls = []
    launch = fake_launcher(calls)

    def launch_and_other_runner_finishes_seed_2(cell, results_dir, log_dir, threads):
        if cell.key != second.key:
            append_row(fake_row(second), results_dir)  # the other runner's row for seed 2, written meanwhile
        return launch(cell, results_dir, log_dir, threads)

    report = experiments.run_grid(grid, "res", launcher=launch_and_other_runner_finishes_seed_2)
    assert calls == ["d TIGER sft seed=1"] and [c.label for c in report["done"]] == ["d TIGER sft seed=2"]
    assert len(read_rows("res")) == 2 and os.listdir(os.path.join("res", ".running")) == []


def test_bad_grids_give_clear_errors():
    with pytest.raises(ConfigError, match="unknown grid key"):
        write_grid(datasets=["d"], model=["TIGER"])
    with pytest.raises(ConfigError, match="'datasets' is empty"):
        write_grid(models=["TIGER"])
    with pytest.raises(ConfigError, match="sweep.gflowgr_lambda must be a non-empty list"):
        write_grid(datasets=["d"], sweep={"gflowgr_lambda": 0.1})
    with pytest.raises(ConfigError, match="does not exist"):
        experiments.load_grid("nope.yaml")


def test_variant_table_and_sweep_plot_from_rows(tmp_path):
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[1, 2],
                      sweep={"gflowgr_lambda": [0.1, 1.0]})
    cells = experiments.expand(grid)
    for i, cell in enumerate(cells[:-1]):  # the last cell (lambda=1.0, seed 2) has no row
        append_row(fake_row(cell, test=0.1 * (i + 1), valid=0.01 * (i + 1)), "res")
    table = analysis.variant_table(grid, "res")
    assert "| d | TIGER | gflowgr-tb | gflowgr_lambda=0.1 | 0.2000 ± 0.1414 |" in table  # seeds 1, 2: 0.1 and 0.3
    # lambda=1.0 has seed 1 only (0.2): 0.1 above the plain run's 0.1 of that seed; lambda=0.1 is the plain run
    assert table.splitlines()[-1].endswith("| 0.2000 | 0.2000 | 0.2000 | 0.2000 | +0.1000 (1 seed) | — | 1 | 2 |")
    assert "| gflowgr_lambda=0.1 | 0.2000 ± 0.1414 | 0.2000 ± 0.1414 | 0.2000 ± 0.1414 | 0.2000 ± 0.1414 | (plain) |" \
        in table
    points = analysis.sweep_points(grid, "res", "ndcg@10", "valid")
    # the curve keeps the seeds all its points have: seed 1 only, not a 2-seed mean beside a 1-seed point
    assert [(p[0], round(p[1], 4), p[3], p[4]) for p in points[("d", "TIGER", "gflowgr-tb", "gflowgr_lambda")]] == \
        [("0.1", 0.01, 1, (1,)), ("1.0", 0.02, 1, (1,))]
    paths = analysis.plot_sweep(points, str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in paths] == ["sweep-gflowgr_lambda.png"]
    with open(paths[0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_variant_table_differences_from_the_plain_run_over_common_seeds():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[1, 2, 3],
                      variants={"full": {}, "wo-Wt": {"gflowgr_weights": False}, "wo-Ada": {"gflowgr_sampler": "random"},
                                "same-gap": {"gflowgr_n_aug": 2}})
    plain = {1: 0.30, 2: 0.40, 3: 0.50}
    for cell in experiments.expand(grid):
        if cell["finetune"] == "sft":
            continue
        seed, v = cell["seed"], cell["variant"]
        if v == "full":
            append_row(fake_row(cell, test=plain[seed]), "res")
        elif v == "wo-Wt":  # 0.01, 0.02, 0.03 above the plain run: mean +0.02, t = 2*sqrt(3), df 2, p = 0.074
            append_row(fake_row(cell, test=plain[seed] + 0.01 * seed), "res")
        elif v == "wo-Ada" and seed == 1:  # seed 1 only, 0.05 below
            append_row(fake_row(cell, test=plain[seed] - 0.05), "res")
        elif v == "same-gap" and seed < 3:  # 0.01 above in both seeds: no spread for a t-test
            append_row(fake_row(cell, test=plain[seed] + 0.01), "res")
    lines = {line.split(" | ")[3]: line for line in analysis.variant_table(grid, "res").splitlines()[2:]}
    assert "| (plain) | — | 1,2,3 | — |" in lines["full"]
    assert "| +0.0200 (p=0.07) | — | 1,2,3 | — |" in lines["wo-Wt"]
    assert "| -0.0500 (1 seed) | — | 1 | 2,3 |" in lines["wo-Ada"]
    assert "| +0.0100 (in each of 2 seeds) | — | 1,2 | 3 |" in lines["same-gap"]
    # the plain run's rows are found by its key even when the grid has no variant without overrides
    grid2 = write_grid("grid2.yaml", datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[1, 2, 3],
                       variants={"wo-Wt": {"gflowgr_weights": False}})
    assert "| +0.0200 (p=0.07) | — | 1,2,3 | — |" in analysis.variant_table(grid2, "res")


def test_real_cell_runs_in_a_subprocess_writes_a_tagged_row_and_is_skipped_after():
    src, _, _ = tiny_letter(n_users=30, n_items=15, seq_len=6)
    grid = write_grid(datasets=["tiny"], baselines=["SASRec"], seeds=[7],
                      config={"source_path": os.path.abspath(src), "epochs": 1, "hidden_size": 8,
                              "inner_size": 16, "n_layers": 1, "n_heads": 1, "train_batch_size": 64})
    report = experiments.run_grid(grid, "res")
    assert [c.label for c in report["ran"]] == ["tiny SASRec none seed=7"], open(
        os.path.join("log", "experiments", "grid", os.listdir(os.path.join("log", "experiments", "grid"))[-1])).read()
    row, = read_rows("res")
    assert (row["model"], row["seed"], row["experiment"], row["config"]["hidden_size"]) == ("SASRec", 7, "grid", 8)
    assert row["experiment_cell"] == experiments.expand(grid)[0].key
    assert os.listdir(os.path.join("res", "logs", "tiny")) == [os.path.basename(row["log"])]
    assert experiments.run_grid(grid, "res")["ran"] == []


def test_a_sweep_cells_command_line_gives_the_config_its_variant_name(monkeypatch):
    """A sweep variant's name holds "=" (gflowgr_n_aug=1), which RecBole's own command-line parser drops with only a
    warning: the runner's command, read by the real entry point, must still give the run its tags and overrides."""
    import run_recbole_gflowgr
    from recbole_gflowgr import quick_start

    src, _, _ = tiny_letter(n_users=30, n_items=15, seq_len=6)
    grid = write_grid(datasets=["tiny"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[7],
                      config={"source_path": os.path.abspath(src)}, sweep={"gflowgr_n_aug": [1]})
    cell, = [c for c in experiments.expand(grid) if c["variant"]]
    with open("cell.yaml", "w") as f:
        yaml.safe_dump(dict(cell["overrides"]), f)
    seen = []
    monkeypatch.setattr(quick_start, "run", lambda model, dataset, config_file_list=None, cmd_args=(): seen.append(
        quick_start.load_config(model, dataset, config_file_list, None, cmd_args)))
    assert run_recbole_gflowgr.main(experiments.command(cell, "cell.yaml")[2:]) == 0
    config, = seen
    assert (config["experiment_variant"], config["experiment_cell"], config["experiment"]) == (
        "gflowgr_n_aug=1", cell.key, "grid")
    assert (config["gflowgr_n_aug"], config["finetune"], config["seed"]) == (1, "gflowgr-tb", 7)


def test_gpu_chunk_results_merge_adds_only_new_rows_and_files():
    """benchmarks/gpu/merge.py: rows the chunk added are appended once (merging twice adds nothing), rows written
    here meanwhile stay, new logs are copied, existing files and the runner's pid claims are left alone."""
    import importlib.util
    import tarfile

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("gpu_merge", os.path.join(REPO, "benchmarks", "gpu", "merge.py"))
    merge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge)
    os.makedirs("here/logs/d")
    with open("here/d.jsonl", "w") as f:
        f.write('{"a": 1}\n{"local": 2}\n')
    with open("here/logs/d/old.log", "w") as f:
        f.write("ours")
    os.makedirs("chunk/results/logs/d")
    os.makedirs("chunk/results/.running")
    with open("chunk/results/d.jsonl", "w") as f:
        f.write('{"a": 1}\n{"b": 2}\n{"c": 3}\n')
    with open("chunk/results/e.jsonl", "w") as f:
        f.write('{"e": 1}\n')
    for name, text in (("old.log", "theirs"), ("new.log", "new")):
        with open(f"chunk/results/logs/d/{name}", "w") as f:
            f.write(text)
    open("chunk/results/.running/abc.pid", "w").close()
    with tarfile.open("results.tar.gz", "w:gz") as tar:
        tar.add("chunk/results", arcname="results")
    added = merge.merge("results.tar.gz", "here")
    assert added == {"d.jsonl": 2, "e.jsonl": 1, os.path.join("logs", "d", "new.log"): 1}
    with open("here/d.jsonl") as f:
        assert f.read().splitlines() == ['{"a": 1}', '{"local": 2}', '{"b": 2}', '{"c": 3}']
    with open("here/logs/d/old.log") as f:
        assert f.read() == "ours"
    assert not os.path.exists("here/.running/abc.pid")
    assert merge.merge("results.tar.gz", "here") == {}


def test_rekey_moves_rows_to_the_cell_of_their_config_after_a_default_changed():
    from recbole_gflowgr import rekey

    src, _, _ = tiny_letter(n_users=30, n_items=15, seq_len=6)
    with open("base.yaml", "w") as f:
        yaml.safe_dump({"gflowgr_lambda": 0.1}, f)
    keys = dict(datasets=["tiny"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[7],
                config_files=[os.path.abspath("base.yaml")], config={"source_path": os.path.abspath(src)},
                variants={"plain": {}, "lam05": {"gflowgr_lambda": 0.5}})
    cells = {c["variant"]: c for c in experiments.expand(write_grid(**keys))}
    for cell in cells.values():  # rows as the runner wrote them, each with the hash of its config
        append_row(dict(fake_row(cell), experiment="grid", config_hash=rekey.cell_hash(cell)), "res")
    append_row(dict(fake_row(cells["lam05"]), experiment="grid", config_hash="other"), "res")  # no cell's config
    old = {variant: cell.key for variant, cell in cells.items()}
    with open("base.yaml", "w") as f:  # the default becomes the variant's value: the variant's override is dropped
        yaml.safe_dump({"gflowgr_lambda": 0.5}, f)
    experiments._defaults.cache_clear()  # (a new process reads the changed file anyway)
    new = {c["variant"]: c.key for c in experiments.expand(write_grid(**keys))}
    assert new["lam05"] == new["plain"] != old["lam05"]
    report = rekey.rekey(experiments.load_grid("grid.yaml"), "res")
    # the lambda-0.5 row goes to the cell that now has lambda 0.5; the lambda-0.1 row's config is no cell's any more
    assert [(o, n) for o, n, _ in report["moved"]] == [(old["lam05"], new["plain"])]
    assert sorted(report["orphans"]) == sorted([(old["plain"], "tiny TIGER gflowgr-tb seed=7 [plain]"),
                                                (old["lam05"], "tiny TIGER gflowgr-tb seed=7 [lam05]")])
    rows = read_rows("res")
    assert [r["experiment_cell"] for r in rows] == [None, new["plain"], None]
    assert rows[0]["experiment_cell_before"] == old["plain"]
    assert set(experiments.done_cells("res")) == {new["plain"]}
    assert rekey.rekey(experiments.load_grid("grid.yaml"), "res") == {"kept": 1, "moved": [], "orphans": []}


def test_rekey_compares_only_the_keys_a_run_reads():
    from recbole_gflowgr.rekey import run_hash

    a, b = {"d_model": 64, "gflowgr_cm_score": "minmax"}, {"d_model": 64, "gflowgr_cm_score": "percentile"}
    assert run_hash(a, "TIGER", "sft") == run_hash(b, "TIGER", "sft")  # SFT reads no fine-tuning key
    assert run_hash(a, "TIGER", "sft-continued") == run_hash(b, "TIGER", "sft-continued")  # nor the control
    assert run_hash(a, "TIGER", "gflowgr-tb") != run_hash(b, "TIGER", "gflowgr-tb")
    epochs = dict(a, finetune_epochs=3)
    assert run_hash(epochs, "TIGER", "sft-continued") != run_hash(a, "TIGER", "sft-continued")
    assert run_hash(dict(a, d_model=32), "TIGER", "sft") != run_hash(a, "TIGER", "sft")


def test_rekey_ignores_keys_that_the_run_itself_added_to_its_config():
    """RecBole's BERT4Rec writes MASK_ITEM_SEQ & co. into its config while it runs, so its row's config has keys that
    the cell's config never has: the row stays its cell's; a row that differs in a key the cell has is orphaned."""
    from recbole_gflowgr import rekey

    src, _, _ = tiny_letter(n_users=30, n_items=15, seq_len=6)
    grid = write_grid(datasets=["tiny"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[7],
                      config={"source_path": os.path.abspath(src)})
    cell = experiments.expand(grid)[0]
    plain = rekey.cell_config(cell)
    append_row(dict(fake_row(cell), experiment="grid", config=dict(plain, MASK_ITEM_SEQ="Mask_item_id_list")), "res")
    append_row(dict(fake_row(cell), experiment="grid", config=dict(plain, gflowgr_lambda=0.7)), "res")
    report = rekey.rekey(experiments.load_grid("grid.yaml"), "res")
    assert report["kept"] == 1 and report["moved"] == []
    assert [key for key, _ in report["orphans"]] == [cell.key]
    assert [r["experiment_cell"] for r in read_rows("res")] == [cell.key, None]
