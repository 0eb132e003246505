"""The grid tables and sweep plots show every variant against its control (``sft-continued``) and SFT."""
import math
import os
import struct

from recbole_gflowgr import analysis, experiments
from recbole_gflowgr.trainer.results import append_row
from test_experiments import fake_row, write_grid

SFT = {1: 0.40, 2: 0.50, 3: 0.60}
CONTROL = {1: 0.41, 2: 0.52, 3: 0.63}  # the control gains 0.01, 0.02, 0.03 over SFT
TB = {"0.1": {1: 0.40, 2: 0.52, 3: 0.62}, "1.0": {1: 0.43, 2: 0.54, 3: 0.65}}  # vs control: -.01,0,-.01 / +.02 each


def sweep_grid_with_rows():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb", "sft-continued"], seeds=[1, 2, 3],
                      sweep={"gflowgr_lambda": [0.1, 1.0]})
    for seed in (1, 2, 3):
        sft = experiments._cell(grid, "d", "TIGER", "sft", seed, "", {})
        append_row(fake_row(sft, test=SFT[seed], valid=SFT[seed]), "res")
    for cell in experiments.expand(grid):
        if cell["finetune"] == "sft-continued":
            value = CONTROL[cell["seed"]]
        else:
            value = TB[cell["variant"].partition("=")[2]][cell["seed"]]
        append_row(fake_row(cell, test=value, valid=value), "res")
    return grid


def test_control_key_is_the_plain_control_for_method_keys_and_none_for_sft_and_the_control():
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb", "sft-continued"], seeds=[1],
                      variants={"lam": {"gflowgr_lambda": 0.5}, "ft": {"finetune_epochs": 3}})
    cells = {(c["finetune"], c["variant"]): c for c in experiments.expand(grid)}
    plain_control = cells[("sft-continued", "")].key  # a method key is no control key: the plain control run
    assert experiments.control_key(grid, cells[("gflowgr-tb", "lam")]) == plain_control
    assert experiments.control_key(grid, cells[("gflowgr-tb", "ft")]) == cells[("sft-continued", "ft")].key
    assert cells[("sft-continued", "ft")].key != plain_control  # another budget: another control run
    assert experiments.control_key(grid, cells[("sft-continued", "")]) is None
    assert experiments.control_key(grid, experiments._cell(grid, "d", "TIGER", "sft", 1, "", {})) is None


def test_variant_table_gives_the_paired_difference_from_the_control():
    grid = sweep_grid_with_rows()
    lines = {tuple(line.split(" | ")[2:4]): line for line in analysis.variant_table(grid, "res").splitlines()[2:]}
    assert "| Δ ndcg@10 vs control |" in analysis.variant_table(grid, "res").splitlines()[0]
    # lambda 1.0: +0.02 over the control in each seed (no spread: no t-test); +0.03, 0.02, 0.03 over the plain (lambda 0.1) run
    assert lines[("gflowgr-tb", "gflowgr_lambda=1.0")].endswith(
        "| +0.0267 (p=0.02) | +0.0200 (in each of 3 seeds) | 1,2,3 | — |")
    # lambda 0.1 is the plain run: -0.01, 0, -0.01 against the control, t = -2, df 2, p = 0.18
    assert lines[("gflowgr-tb", "gflowgr_lambda=0.1")].endswith("| (plain) | -0.0067 (p=0.18) | 1,2,3 | — |")
    control, = [line for (method, _), line in lines.items() if method == "sft-continued"]  # one run per seed
    assert control.endswith("| (plain) | (control) | 1,2,3 | — |")


def test_sweep_points_carry_the_control_and_sft_of_their_seeds_and_the_plot_pairs_them(tmp_path):
    grid = sweep_grid_with_rows()
    points = analysis.sweep_points(grid, "res", "ndcg@10", "valid")
    curve = points[("d", "TIGER", "gflowgr-tb", "gflowgr_lambda")]
    assert [p.value for p in curve] == ["0.1", "1.0"] and all(p.seeds == (1, 2, 3) for p in curve)
    assert curve[1].scores == TB["1.0"] and curve[1].control == CONTROL and curve[1].sft == SFT
    assert list(analysis._reference(curve, "control").round(4)) == [0.52, 0.52]
    assert list(analysis._reference(curve, "sft").round(4)) == [0.5, 0.5]
    assert ("d", "TIGER", "sft-continued", "gflowgr_lambda") not in points  # the control is a reference, no curve
    path, = analysis.plot_sweep(points, str(tmp_path))
    with open(path, "rb") as f:
        width, height = struct.unpack(">II", f.read(24)[16:24])
    assert width > 2 * height  # two panels: the metric, and the paired difference from the control


def test_a_point_without_a_control_for_every_seed_draws_no_reference(tmp_path):
    grid = write_grid(datasets=["d"], models=["TIGER"], finetunes=["gflowgr-tb"], seeds=[1, 2],
                      sweep={"gflowgr_lambda": [0.1, 1.0]})
    for cell in experiments.expand(grid):
        append_row(fake_row(cell, test=0.1, valid=0.1), "res")
    control = experiments._cell(grid, "d", "TIGER", "sft-continued", 1, "", {})
    append_row(fake_row(control, test=0.2, valid=0.2), "res")  # seed 1 only
    curve = analysis.sweep_points(grid, "res")[("d", "TIGER", "gflowgr-tb", "gflowgr_lambda")]
    assert [p.control for p in curve] == [{1: 0.2}, {1: 0.2}]
    assert all(math.isnan(v) for v in analysis._reference(curve, "control"))
    assert "| (plain) | -0.1000 (1 seed) | 1,2 | — |" in analysis.variant_table(grid, "res")
    path, = analysis.plot_sweep(analysis.sweep_points(grid, "res"), str(tmp_path))
    assert os.path.isfile(path)
