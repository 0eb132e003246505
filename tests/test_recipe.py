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
    assert experiments.load_grid(GRID)["variants"]["medium"] == medium
    assert medium["num_heads"] * medium["d_kv"] == medium["d_model"]
