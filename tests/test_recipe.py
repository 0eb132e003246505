"""The recipe-study grid (properties/experiments/recipe.yaml) and the medium backbone."""
import os

import yaml

from conftest import REPO
from recbole_gflowgr import experiments
from test_experiments import fake_launcher

GRID = os.path.join(REPO, "properties", "experiments", "recipe.yaml")


def test_recipe_grid_runs_one_variant_at_a_time_sft_only():
    grid = experiments.load_grid(GRID)
    cells = experiments.expand(grid)
    variants = list(grid["variants"])
    assert {c["finetune"] for c in cells} == {"sft"} and {c["seed"] for c in cells} == {42}
    assert sorted((c["model"], c["variant"]) for c in cells) == sorted(
        (m, v) for m in ("TIGER", "LETTER") for v in variants)  # every variant is its own run, baseline included
    assert len({c.key for c in cells}) == len(cells) == 2 * len(variants)
    calls = []
    experiments.run_grid(grid, "res", launcher=fake_launcher(calls), only=("lr4e-3-isqrt",))
    assert calls == [f"industrial-scientific {m} sft [lr4e-3-isqrt] seed=42" for m in ("TIGER", "LETTER")]
    calls.clear()
    experiments.run_grid(grid, "res", launcher=fake_launcher(calls), only=("TIGER", "baseline"))
    assert calls == ["industrial-scientific TIGER sft [baseline] seed=42"]


def test_medium_variant_is_the_medium_backbone():
    with open(os.path.join(REPO, "properties", "medium.yaml")) as f:
        medium = yaml.safe_load(f)
    variants = experiments.load_grid(GRID)["variants"]
    assert variants["medium"] == medium
    assert variants["medium-b512-lr2e-3"] == {**variants["batch512-lr2e-3"], **medium}  # medium on the chosen recipe
    assert medium["num_heads"] * medium["d_kv"] == medium["d_model"]


def fake_recipe_row(cell, valid, curve, best_epoch, stopped=True, **config):
    from test_experiments import fake_row

    row = fake_row(cell, test=valid - 0.01, valid=valid, wall=curve[-1][1] + 30)
    row["valid_curve"] = [{"epoch": e, "elapsed_s": s, "ndcg@10": v} for e, s, v in curve]
    row.update(best_epoch=best_epoch, epochs_trained=curve[-1][0], stopped_early=stopped)
    row["config"] = {"learning_rate": 0.001, "lr_scheduler": "constant", "warmup_steps": 0, "train_batch_size": 256,
                     "num_encoder_layers": 2, "num_decoder_layers": 2, "d_model": 64, "d_ff": 256, "epochs": 200,
                     **config}
    return row


def test_recipe_table_and_plot_from_fake_rows():
    from recbole_gflowgr import recipe
    from recbole_gflowgr.trainer.results import append_row

    grid = experiments.load_grid(GRID)
    cells = {(c["model"], c["variant"]): c for c in experiments.expand(grid)}
    append_row(fake_recipe_row(cells["TIGER", "baseline"], 0.04, [(1, 60, 0.02), (2, 120, 0.04), (3, 180, 0.03)], 2),
               "res")
    append_row(fake_recipe_row(cells["TIGER", "lr4e-3-cosine60"], 0.05, [(1, 60, 0.03), (2, 120, 0.05)], 2,
                               stopped=False, learning_rate=0.004, lr_scheduler="cosine", warmup_steps=300,
                               epochs=60), "res")
    append_row(fake_recipe_row(cells["TIGER", "lr5e-3-cos25"], 0.045, [(1, 60, 0.045)], 1, stopped=False,
                               learning_rate=0.005, lr_scheduler="cosine", lr_decay_epochs=25), "res")
    table = recipe.recipe_table(grid, "res")
    lines = table.splitlines()
    assert any("| lr5e-3-cos25 | 0.005 | cosine (25 ep) |" in line for line in lines)  # the decay horizon, not 200
    assert lines[2] == ("| industrial-scientific | TIGER | baseline | 0.001 | constant | 0 | 256 | 2+2L d64 ff256 | "
                        "0.0400 | 0.0300 | 2 | 3 | true | 2.0 | 3.5 |")
    assert lines[3].startswith("| industrial-scientific | TIGER | lr4e-3-cosine60 | 0.004 | cosine (60 ep) | 300 |")
    assert "| **0.0500** |" in lines[3] and "| false |" in lines[3]  # the best valid score of the model in bold
    assert lines[-1].startswith("missing: ") and "LETTER sft [medium]" in lines[-1]
    assert "TIGER sft [baseline]" not in lines[-1]
    recipe.main(["--grid", GRID, "--results_dir", "res"])
    assert os.path.getsize("res/plots/recipe-industrial-scientific.png") > 1000
    with open("res/plots/recipe.md") as f:
        assert f.read() == table + "\n"


def test_recipe_command_without_rows_says_what_to_run(capsys):
    from recbole_gflowgr import recipe

    assert recipe.main(["--grid", GRID, "--results_dir", "nothing"]) == 2
    assert "error: no rows yet for" in capsys.readouterr().err
