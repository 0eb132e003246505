"""Foundation: conversion, our yaml, the runner end to end, clear errors, RecBole compatibility fixes."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, shared_dataset
from recbole_gflowgr.data import prepare_dataset, read_item_text
from recbole_gflowgr.foundation.errors import ConfigError, DatasetError

sys.path.insert(0, REPO)
import run_recbole_gflowgr  # noqa: E402


def write_letter(folder, name, inter, items, raw_inter=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter.json"), "w") as f:
        f.write(raw_inter if raw_inter is not None else json.dumps(inter))
    with open(os.path.join(folder, f"{name}.item.json"), "w") as f:
        json.dump(items, f)
    return folder


def tiny_letter(folder="src", name="tiny", n_users=40, n_items=12, seq_len=6, seed=0):
    rng = np.random.default_rng(seed)
    inter = {str(u): [int(i) for i in rng.choice(n_items, seq_len, replace=False)] for u in range(n_users)}
    items = {str(i): {"title": f"item {i}", "categories": f"cat {i % 3}"} for i in range(n_items)}
    return write_letter(folder, name, inter, items), inter, items


def read_atomic(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in f]


def test_letter_conversion_keeps_every_interaction_in_order():
    src, inter, items = tiny_letter()
    manifest = prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert (manifest["n_users"], manifest["n_items"], manifest["n_interactions"]) == (40, 12, 240)
    header, rows = read_atomic("dataset/tiny/tiny.inter")
    assert header == ["user_id:token", "item_id:token", "timestamp:float"]
    by_user = {}
    for user, item, pos in rows:
        by_user.setdefault(user, []).append((float(pos), item))
    for user, seq in inter.items():
        assert [item for _, item in by_user[user]] == [str(i) for i in seq]
        assert [pos for pos, _ in by_user[user]] == list(range(len(seq)))
    header, rows = read_atomic("dataset/tiny/tiny.item")
    assert header == ["item_id:token", "title:token_seq", "categories:token_seq"]
    assert read_item_text("dataset/tiny", "tiny", ["title", "categories"])["3"] == "title: item 3; categories: cat 0"


def test_conversion_is_skipped_when_current_and_redone_when_source_changes():
    src, inter, items = tiny_letter()
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    stamp = os.stat("dataset/tiny/tiny.inter").st_mtime_ns
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert os.stat("dataset/tiny/tiny.inter").st_mtime_ns == stamp
    inter["0"] = inter["0"][:4]
    write_letter(src, "tiny", inter, items)
    assert prepare_dataset("tiny", "dataset/tiny", source_path=src)["n_interactions"] == 238


def test_reprovisioned_source_keeps_caches_and_changed_source_drops_them():
    src, inter, items = tiny_letter()
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    os.makedirs("dataset/tiny/tokenizer")
    open("dataset/tiny/tokenizer/cache.npz", "w").close()
    stamp = os.stat("dataset/tiny/tiny.inter").st_mtime_ns
    write_letter(src, "tiny", inter, items)  # same content, new mtime: nothing to do
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert os.stat("dataset/tiny/tiny.inter").st_mtime_ns == stamp
    with open(os.path.join(src, "tiny.item.json"), "w") as f:  # other bytes, same converted content: caches kept
        json.dump(items, f, indent=2)
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert os.path.isfile("dataset/tiny/tokenizer/cache.npz")
    items["3"]["title"] = "renamed"  # other item text: the caches are stale and go
    write_letter(src, "tiny", inter, items)
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert not os.path.exists("dataset/tiny/tokenizer")


def test_converted_dataset_is_used_where_its_sources_are_absent():
    """dataset/<name>/ carried to a machine without the source files (e.g. the GPU machine): used as it is; a
    source that is there but unreadable is still an error."""
    src, _, _ = tiny_letter()
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    stamp = os.stat("dataset/tiny/tiny.inter").st_mtime_ns
    shutil.rmtree(src)
    manifest = prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert manifest["n_interactions"] == 240 and os.stat("dataset/tiny/tiny.inter").st_mtime_ns == stamp
    os.makedirs(src)
    with open(os.path.join(src, "tiny.inter.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(DatasetError, match="tiny.inter.json"):
        prepare_dataset("tiny", "dataset/tiny", source_path=src)


def test_ml100k_from_the_recbole_wheel():
    manifest = prepare_dataset("ml-100k", "dataset/ml-100k")
    assert (manifest["n_users"], manifest["n_items"], manifest["n_interactions"]) == (943, 1682, 100000)
    text = read_item_text("dataset/ml-100k", "ml-100k", ["movie_title", "release_year", "class"])
    assert text["1"] == "movie_title: Toy Story; release_year: 1995; class: Animation Children's Comedy"
    from recbole_gflowgr.data.registry import DATASETS
    import pandas as pd

    src = pd.read_csv(os.path.join(DATASETS["ml-100k"].default_source, "ml-100k.inter"), sep="\t")
    first = src[src["user_id:token"] == 1].sort_values("timestamp:float", kind="stable")["item_id:token"]
    _, rows = read_atomic("dataset/ml-100k/ml-100k.inter")
    assert [r[1] for r in rows if r[0] == "1"] == [str(i) for i in first]


@pytest.mark.parametrize("name,prefix,counts", [("amazon-beauty", "Beauty", (22363, 12101, 198502)),
                                                ("yelp", "Yelp", (30431, 20033, 316354))])
def test_real_dataset_counts(name, prefix, counts):
    shared_dataset(name)
    manifest = prepare_dataset(name, f"dataset/{name}")
    assert (manifest["n_users"], manifest["n_items"], manifest["n_interactions"]) == counts


@pytest.mark.parametrize("case", ["missing", "not-json", "missing-item", "short-user", "duplicate-id", "not-utf8"])
def test_bad_sources_give_one_clear_error_and_no_output(case):
    src, inter, items = tiny_letter()
    expect = {"missing": "not found", "not-json": "not valid JSON", "missing-item": "no entry in",
              "short-user": "fewer than 3", "duplicate-id": "twice", "not-utf8": "not UTF-8"}[case]
    if case == "missing":
        os.remove(os.path.join(src, "tiny.item.json"))
    elif case == "not-json":
        write_letter(src, "tiny", None, items, raw_inter='{"0": [1, 2,')
    elif case == "missing-item":
        inter["5"].append(99)
        write_letter(src, "tiny", inter, items)
    elif case == "short-user":
        inter["7"] = [1, 2]
        write_letter(src, "tiny", inter, items)
    elif case == "duplicate-id":
        write_letter(src, "tiny", None, items, raw_inter='{"0": [1, 2, 3], "0": [4, 5, 6]}')
    else:
        with open(os.path.join(src, "tiny.inter.json"), "wb") as f:
            f.write(b'{"0": [1, 2, 3], "\xff": [1, 2, 3]}')
    with pytest.raises(DatasetError, match=expect) as err:
        prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert "tiny" in str(err.value) and "\n" not in str(err.value)
    assert not os.path.exists("dataset") or os.listdir("dataset") == []


def test_our_yaml_is_loaded_and_argv_does_not_leak(monkeypatch):
    from recbole_gflowgr.config import Config

    monkeypatch.setattr(sys, "argv", ["pytest", "--epochs=7", "-q"])
    config = Config("SASRec", "ml-100k")
    assert config["MAX_ITEM_LIST_LENGTH"] == 20 and config["topk"] == [5, 10]
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["order"] == "TO"
    assert config["valid_metric"] == "NDCG@10" and config["loss_type"] == "CE"
    assert config["epochs"] == 200  # sys.argv ignored unless passed as cmd_args
    assert config["data_path"] == os.path.join("dataset/", "ml-100k")  # not RecBole's bundled example
    assert config["text_fields"] == ["movie_title", "release_year", "class"]
    assert Config("SASRec", "ml-100k", cmd_args=["--epochs=7"])["epochs"] == 7
    # a value holding "=" (a sweep variant's name), which RecBole's own parser drops with a warning
    config = Config("SASRec", "ml-100k", cmd_args=["--experiment_variant=gflowgr_n_aug=1", "--epochs=3"])
    assert config["experiment_variant"] == "gflowgr_n_aug=1" and config["epochs"] == 3
    # a str key whose text Python would read as a number (a grid cell's 12-hex key, all digits or digits + e)
    config = Config("SASRec", "ml-100k", cmd_args=["--experiment_cell=245474454162", "--experiment_variant=1234e5678901"])
    assert config["experiment_cell"] == "245474454162" and config["experiment_variant"] == "1234e5678901"
    assert Config("SASRec", "ml-100k", cmd_args=["--experiment_cell=None"])["experiment_cell"] is None


def test_recbole_compatibility_fixes():
    assert np.dtype(np.float_) == np.dtype(np.float) == np.float64 and np.dtype(np.bool) == np.bool_
    import recbole.model.sequential_recommender  # noqa: F401  (imports SINE, which enables anomaly detection)

    assert not torch.is_anomaly_enabled()


def test_unknown_model_is_a_clear_error():
    from recbole_gflowgr.registry import get_model

    with pytest.raises(ConfigError, match="unknown model 'NoSuchModel'.*SASRec"):
        get_model("NoSuchModel")
    assert get_model("SASRec").__name__ == "SASRec"


def test_cli_errors_are_one_line(capsys):
    src, _, _ = tiny_letter()
    assert run_recbole_gflowgr.main(["--model=NoSuchModel", "--dataset=tiny", f"--source_path={src}"]) == 2
    assert run_recbole_gflowgr.main(["--model=SASRec", "--dataset=nowhere"]) == 2
    assert run_recbole_gflowgr.main(["--model=SASRec", "--dataset=tiny", "--source_path=no/such/dir"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "NoSuchModel" in err[0] and "nowhere" in err[1] and "no/such/dir/tiny.inter.json" in err[2]


def test_command_turns_input_errors_into_one_line_and_status_2_and_keeps_bugs(capsys):
    from recbole_gflowgr.foundation.errors import cli

    @cli
    def main(argv=None):
        if argv == ["bad"]:
            raise DatasetError("source x.json is malformed; fix it")
        if argv == ["bug"]:
            raise KeyError("a bug")
        return 0

    assert main([]) == 0 and main(["bad"]) == 2
    assert capsys.readouterr().err == "error: source x.json is malformed; fix it\n"
    with pytest.raises(KeyError):  # a bug is not an input error: its traceback stays
        main(["bug"])


def test_every_command_of_the_package_reports_input_errors_the_same_way():
    import ast
    import glob

    mains = {}
    for path in glob.glob(os.path.join(REPO, "recbole_gflowgr", "**", "*.py"), recursive=True) + [
            os.path.join(REPO, "run_recbole_gflowgr.py")]:
        with open(path) as f:
            for node in ast.parse(f.read()).body:
                if isinstance(node, ast.FunctionDef) and node.name == "main":
                    mains[os.path.relpath(path, REPO)] = [ast.unparse(d) for d in node.decorator_list]
    assert len(mains) == 12 and all(d == ["cli"] for d in mains.values()), mains


def test_runner_end_to_end_writes_a_result_row(capsys):
    src, _, _ = tiny_letter(n_users=60)
    code = run_recbole_gflowgr.main(["--model=SASRec", "--dataset=tiny", f"--source_path={src}", "--epochs=2",
                                     "--show_progress=False", "--results_dir=res", "--hidden_size=16",
                                     "--inner_size=32", "--train_batch_size=64"])
    assert code == 0
    assert "test: recall@5=" in capsys.readouterr().out
    with open("res/tiny.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["finetune"], row["dataset"], row["seed"], row["epochs"]) == ("SASRec", "none", "tiny", 42, 2)
    assert set(row["test"]) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert all(0.0 <= v <= 1.0 for v in row["test"].values())
    assert row["device"].startswith("cpu") and len(row["config_hash"]) == 12 and row["wall_s"] > 0
    assert os.path.isfile(row["checkpoint"]) and os.path.isdir("log")


@pytest.mark.parametrize("model", ["GRU4Rec", "BERT4Rec"])
def test_other_classic_models_run_through_the_same_entry_point(model):
    src, _, _ = tiny_letter(n_users=60)
    assert run_recbole_gflowgr.main([f"--model={model}", "--dataset=tiny", f"--source_path={src}", "--epochs=1",
                                     "--show_progress=False", "--results_dir=res", "--hidden_size=16",
                                     "--inner_size=32", "--embedding_size=16", "--train_batch_size=64"]) == 0
    with open("res/tiny.jsonl") as f:
        (row,) = [json.loads(line) for line in f]
    assert (row["model"], row["finetune"]) == (model, "none") and "ndcg@10" in row["test"]


def test_training_lock_waits_for_a_live_owner_and_takes_over_a_stale_one(monkeypatch):
    import subprocess

    from recbole_gflowgr.foundation import utils

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    os.makedirs("cache", exist_ok=True)
    with open("cache/x.pth.lock", "w") as f:
        f.write(str(owner.pid))
    waited = []
    monkeypatch.setattr(utils.time, "sleep", lambda s: (waited.append(s), owner.wait()))
    with utils.training_lock("cache/x.pth", poll_s=0.01):
        assert open("cache/x.pth.lock").read() == str(os.getpid())
    assert waited and not os.path.exists("cache/x.pth.lock")
    with open("cache/x.pth.lock", "w") as f:
        f.write("999999999")  # no such process: stale
    with utils.training_lock("cache/x.pth"):
        pass


def test_collaborative_model_is_trained_once_then_loaded_and_scores_in_unit_range():
    """cm_checkpoint: the CM's first call trains RecBole's SASRec (with resume on, from scratch when there is no
    last checkpoint) and caches it; the second call only returns the cache; the scorer gives [0, 1] scores."""
    from recbole_gflowgr.quick_start import cm_checkpoint, load_scorer

    src, _, _ = tiny_letter(n_users=60)
    args = {"source_path": src, "epochs": 1, "hidden_size": 16, "inner_size": 32, "train_batch_size": 64,
            "results_dir": "res"}
    path = cm_checkpoint("tiny", config_dict=args)
    assert os.path.isfile(path) and path.startswith(os.path.join("saved", "collaborative", "tiny-SASRec-"))
    assert not [f for f in os.listdir("saved") if f.endswith("-last.pth")]  # the finished run left no resume file
    rows = [json.loads(line) for line in open(os.path.join("res", "tiny.jsonl"))]
    assert [(r["model"], r["experiment_variant"]) for r in rows] == [("SASRec", "cm")]  # told apart from Table 1's
    stamp = os.stat(path).st_mtime_ns
    assert cm_checkpoint("tiny", config_dict=args) == path and os.stat(path).st_mtime_ns == stamp
    scorer = load_scorer("tiny", config_dict=args)
    seq = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 0]])
    scores = scorer.score(seq, torch.tensor([3, 1]))  # (2, n_items)
    assert scores.shape == (2, scorer.n_items) and float(scores.min()) >= 0 and float(scores.max()) <= 1
