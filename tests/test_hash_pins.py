"""The config hashes of the default TIGER / LETTER configs are pinned: they name the SFT caches (saved/sft/), the
collaborative model's cache, the ``--resume`` ids and the rows' ``config_hash``. A new config key changes them unless
it is left out at the value that reproduces the runs before it (``results.NEUTRAL_KEYS``): without that, every cached
SFT checkpoint would be trained again and every cut-off run would restart from epoch 0.

If one of these fails after adding a key, add the key with its default to ``NEUTRAL_KEYS`` in
recbole_gflowgr/trainer/results.py — do not re-pin, unless the change is meant to invalidate every cache."""
import os

import pytest

from recbole_gflowgr.config import Config
from recbole_gflowgr.foundation.paths import REPO_ROOT
from recbole_gflowgr.trainer.results import NEUTRAL_KEYS, backbone_keys, config_hash, plain_config

# (model) -> (hash of the backbone keys: SFT caches / SFT resume ids, hash of all keys: rows), ml-100k with
# properties/small.yaml and the recipe it had then, as of commit b17af2b (before fast_dropout, compile and
# time_budget_s existed; small.yaml's recipe changed since, so the test gives the old one explicitly)
PINNED = {"TIGER": ("0b285b73aeea", "0e11960040c4"), "LETTER": ("cf179e89fe12", "8d981e04d659")}
FIRST_RECIPE = {"train_batch_size": 256, "learning_rate": 0.001, "warmup_steps": 0}  # recipe.yaml's `baseline`


@pytest.mark.parametrize("model", sorted(PINNED))
def test_default_config_hashes_are_those_of_the_runs_before_the_newer_keys(model):
    small = os.path.join(REPO_ROOT, "properties", "small.yaml")
    config = Config(model=model, dataset="ml-100k", config_file_list=[small], config_dict=FIRST_RECIPE)
    plain = plain_config(config)
    assert (config_hash(backbone_keys(plain)), config_hash(plain)) == PINNED[model]


def test_each_neutral_key_is_left_out_only_at_its_neutral_value():
    plain = {"model": "TIGER", "epochs": 3}
    for key, neutral in NEUTRAL_KEYS.items():
        assert config_hash({**plain, key: neutral}) == config_hash(plain), key
        other = (not neutral) if isinstance(neutral, bool) else (neutral + 1 if not isinstance(neutral, str) else "x")
        assert config_hash({**plain, key: other}) != config_hash(plain), key
