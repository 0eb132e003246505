"""Grid runner and tables across SFT bases: a fine-tuning row of an older SFT checkpoint than its control's is not
done (rerun, counted missing)."""
import os

from recbole_gflowgr import analysis, experiments
from recbole_gflowgr.trainer.results import append_row, read_rows
from test_experiments import fake_row, write_grid


def test_a_row_of_an_older_sft_base_than_its_controls_is_not_done_and_runs_again():
    """A fine-tuning row that started from another SFT checkpoint than its control's row of the same seed belongs to
    an older base: the tables count it missing (never pair it with the new control) and the runner runs it again;
    a row beside a control that is still to run is judged once that control has its row."""
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["sft", "gflowgr-tb", "sft-continued"], seeds=[1],
                      variants={"full": {}, "lam": {"gflowgr_lambda": 0.5}})
    cells = {(c["finetune"], c["variant"]): c for c in experiments.expand(grid)}
    sft, tb, lam, ctrl = (cells[k] for k in [("sft", ""), ("gflowgr-tb", "full"), ("gflowgr-tb", "lam"),
                                             ("sft-continued", "full")])
    for cell, base in [(sft, None), (ctrl, "old"), (tb, "old"), (lam, "old"), (ctrl, "new")]:
        append_row(dict(fake_row(cell, test=0.3), pretrained=base and f"other/dir/{base}.pth"), "res")
    done = experiments.done_cells("res", grid=grid)
    assert set(experiments.done_cells("res")) == {sft.key, ctrl.key, tb.key, lam.key}  # without the grid: all
    assert set(done) == {sft.key, ctrl.key}
    lines = {tuple(line.split(" | ")[2:4]): line for line in analysis.variant_table(grid, "res").splitlines()[2:]}
    assert all(lines[("gflowgr-tb", v)].endswith("| — | — | 1 |") for v in ("full", "lam"))  # no control, no seed
    calls = []

    def launch(cell, results_dir, log_dir, threads):
        calls.append(cell.label)
        row = dict(fake_row(cell, test=0.4), pretrained="saved/sft/new.pth")
        append_row(row, results_dir)
        return row, 1.0, "fake.log"

    experiments.run_grid(grid, "res", launcher=launch)
    assert calls == ["d TIGER gflowgr-tb [full] seed=1", "d TIGER gflowgr-tb [lam] seed=1"]
    assert "| +0.0000 (1 seed) | +0.1000 (1 seed) | 1 | — |" in analysis.variant_table(grid, "res")  # same base
    # the control itself is rerun (its row removed): the method's row waits for it, then is kept (same checkpoint)
    # or run again (another checkpoint)
    again = ["gflowgr-tb [full]", "gflowgr-tb [lam]"]
    for new_base, runs in [("saved/sft/new.pth", []), ("saved/sft/newer.pth", again)]:
        rows = [r for r in read_rows("res") if r["experiment_cell"] != ctrl.key]
        os.remove("res/d.jsonl")
        for r in rows:
            append_row(r, "res")
        calls.clear()

        def launch(cell, results_dir, log_dir, threads, base=new_base):
            calls.append(cell.label)
            row = dict(fake_row(cell), pretrained=base)
            append_row(row, results_dir)
            return row, 1.0, "fake.log"

        report = experiments.run_grid(grid, "res", launcher=launch)
        assert calls == ["d TIGER sft-continued [full] seed=1"] + [f"d TIGER {r} seed=1" for r in runs]
        assert len(report["done"]) == 1 + 2 - len(runs)  # the SFT cell, and the rows kept
