"""results/artifacts: the semantic IDs and checkpoints that the rows start from, packed and restored (no training)."""
import json
import os
import shutil

import torch

from recbole_gflowgr import artifacts
from recbole_gflowgr.data import prepare_dataset

SFT = "tiny-TIGER-0123456789ab.pth"
CM = "tiny-SASRec-ba9876543210.pth"


def write_tiny(folder="src"):
    os.makedirs(folder, exist_ok=True)
    items = {str(i): {"title": f"item {i}"} for i in range(8)}
    with open(os.path.join(folder, "Tiny.item.json"), "w") as f:
        json.dump(items, f)
    with open(os.path.join(folder, "Tiny.inter.json"), "w") as f:
        json.dump({str(u): [str((u + k) % 8) for k in range(4)] for u in range(6)}, f)
    prepare_dataset("tiny", "dataset/tiny", source_path=folder, source_prefix="Tiny")


def checkpoint(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((3,), value)}, "optimizer": {"state": {0: torch.zeros(3)}},
                "config": None}, path)


def setup_run():
    """What a finished SFT run leaves: its row, its SFT cache, the CM's cache, the dataset's semantic IDs."""
    write_tiny()
    os.makedirs("results")
    with open("results/tiny.jsonl", "w") as f:
        f.write(json.dumps({"dataset": "tiny", "model": "TIGER", "finetune": "sft", "seed": 42,
                            "sft_cache": f"saved/sft/{SFT}", "test": {}}) + "\n")
    checkpoint(f"saved/sft/{SFT}", 1.0)
    checkpoint(f"saved/collaborative/{CM}", 2.0)
    with open(f"saved/collaborative/{CM[:-4]}.json", "w") as f:
        f.write('{"test": {"ndcg@10": 0.06}}')
    checkpoint("saved/sft/tiny-TIGER-ffffffffffff.pth", 3.0)  # no row starts from it: not packed
    ids = "dataset/tiny/tokenizer/rqvae-abc"
    os.makedirs(ids)
    for name, text in (("index.json", '{"0": ["<a_1>"]}'), ("stats.json", "{}"), ("config.json", "{}")):
        with open(os.path.join(ids, name), "w") as f:
            f.write(text)
    return ids


def test_pack_keeps_what_the_rows_start_from_without_optimizer_state_and_restore_puts_it_back(tmp_path):
    os.chdir(tmp_path)
    ids = setup_run()
    written = artifacts.pack("results")
    assert sorted(os.path.relpath(p, "results/artifacts") for p in written) == [
        f"collaborative/{CM}", f"sft/{SFT}", "tokenizer/tiny/rqvae-abc"]
    packed = torch.load(f"results/artifacts/sft/{SFT}", weights_only=False)
    assert "optimizer" not in packed and torch.equal(packed["state_dict"]["w"], torch.ones(3))
    assert artifacts.pack("results") == []  # packed already: left as it is

    shutil.rmtree("saved")
    shutil.rmtree(ids)
    said = []
    restored = artifacts.restore("results", say=said.append)
    assert sorted(restored) == sorted([ids, f"saved/sft/{SFT}", f"saved/collaborative/{CM}"])
    assert len(said) == 3 and said[0] == f"restored semantic IDs {ids}"
    with open(os.path.join(ids, "index.json")) as f:
        assert json.load(f) == {"0": ["<a_1>"]}
    assert torch.equal(torch.load(f"saved/collaborative/{CM}", weights_only=False)["state_dict"]["w"],
                       torch.full((3,), 2.0))
    with open(f"saved/collaborative/{CM[:-4]}.json") as f:  # its metrics travel with it
        assert json.load(f) == {"test": {"ndcg@10": 0.06}}
    assert artifacts.restore("results", say=said.append) == [] and len(said) == 3  # never twice, never over


def test_restore_reports_other_local_semantic_ids_and_leaves_them(tmp_path):
    os.chdir(tmp_path)
    ids = setup_run()
    artifacts.pack("results")
    with open(os.path.join(ids, "index.json"), "w") as f:
        f.write('{"0": ["<a_2>"]}')  # computed here on another CPU: other IDs
    said = []
    assert artifacts.restore("results", say=said.append) == []
    assert len(said) == 1 and said[0].startswith(f"note: {ids} holds other semantic IDs") and "new SFT base" in said[0]
    with open(os.path.join(ids, "index.json")) as f:
        assert f.read() == '{"0": ["<a_2>"]}'


def test_restore_of_an_unconverted_dataset_without_a_registered_source_is_a_note(tmp_path):
    os.chdir(tmp_path)
    os.makedirs("results/artifacts/tokenizer/mine/rqvae-abc")
    said = []
    assert artifacts.restore("results", say=said.append) == []
    assert len(said) == 1 and said[0].startswith("note: semantic IDs of mine not restored (convert it first")


def test_the_command_says_what_it_packed(tmp_path, capsys):
    os.chdir(tmp_path)
    setup_run()
    assert artifacts.main(["pack"]) == 0
    assert capsys.readouterr().out.count("packed results/artifacts/") == 3
    assert artifacts.main(["restore", "--results_dir=nowhere"]) == 2
    assert capsys.readouterr().err == "error: --results_dir=nowhere does not exist\n"


def last_checkpoint(path, cell, best):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"config": {"experiment_cell": cell} if cell else {}, "epoch": 6, "state_dict": {"w": torch.ones(2)},
                "optimizer": {"state": {0: torch.zeros(2)}}, "resume": {"best_file": best}}, path)


def test_the_last_checkpoint_of_a_cut_off_cell_travels_with_its_best_one_until_the_cell_has_its_row(tmp_path):
    os.chdir(tmp_path)
    os.makedirs("results")
    row = {"dataset": "tiny", "model": "TIGER", "finetune": "sft", "seed": 42, "test": {}}
    with open("results/tiny.jsonl", "w") as f:
        f.write(json.dumps({**row, "experiment_cell": "done"}) + "\n")
    checkpoint("saved/TIGER-best-1.pth", 4.0)
    last_checkpoint("saved/TIGER-a-last.pth", "running", "saved/TIGER-best-1.pth")
    last_checkpoint("saved/TIGER-b-last.pth", "done", "saved/TIGER-best-2.pth")  # its row is written: not packed
    last_checkpoint("saved/TIGER-c-last.pth", None, None)  # a run outside a grid: no row to continue
    said = []
    assert artifacts.pack("results", say=said.append) == ["results/artifacts/resume/TIGER-a-last.pth"]
    assert sorted(os.listdir("results/artifacts/resume")) == ["TIGER-a-last.pth", "TIGER-best-1.pth"]
    assert "optimizer" not in torch.load("results/artifacts/resume/TIGER-best-1.pth", weights_only=False)
    assert artifacts.pack("results", say=said.append) == [] and said == []  # unchanged: left as it is

    shutil.rmtree("saved")
    restored = artifacts.restore("results", checkpoint_dir="ckpt", say=said.append)
    assert restored == ["ckpt/TIGER-best-1.pth", "ckpt/TIGER-a-last.pth"]
    assert said == ["restored the last checkpoint of an unfinished run ckpt/TIGER-a-last.pth (7 epochs done)"]
    last = torch.load("ckpt/TIGER-a-last.pth", weights_only=False)
    assert last["resume"]["best_file"] == "ckpt/TIGER-best-1.pth"  # where its best one is now
    assert torch.equal(last["optimizer"]["state"][0], torch.zeros(2))  # an exact resume needs the optimizer state
    assert torch.equal(torch.load("ckpt/TIGER-best-1.pth", weights_only=False)["state_dict"]["w"], torch.full((3,), 4.))
    assert artifacts.restore("results", checkpoint_dir="ckpt", say=said.append) == []  # the local one is newer

    with open("results/tiny.jsonl", "a") as f:
        f.write(json.dumps({**row, "experiment_cell": "running"}) + "\n")  # the resumed cell finished
    assert artifacts.restore("results", checkpoint_dir="elsewhere", say=said.append) == []  # stale: not restored
    said.clear()
    assert artifacts.pack("results", checkpoint_dir="ckpt", say=said.append) == []
    assert said == ["removed results/artifacts/resume/TIGER-a-last.pth (its run has finished)"]
    assert os.listdir("results/artifacts/resume") == []  # its best one too


class RecBoleLikeConfig(dict):
    @property
    def final_config_dict(self):
        return dict(self)


def test_a_cut_off_collaborative_model_travels_with_the_ids_of_its_dataset_until_it_is_cached(tmp_path):
    from recbole_gflowgr.trainer.results import config_hash, plain_config

    os.chdir(tmp_path)
    ids = setup_run()
    os.remove("results/tiny.jsonl")  # no row yet: a GFlowGR run was training its collaborative model
    config = RecBoleLikeConfig(dataset="tiny", model="SASRec", experiment_variant="cm", hidden_size=64,
                               checkpoint_dir="/the/run/machines/saved")  # found under this machine's checkpoint_dir
    torch.save({"config": config, "epoch": 3, "state_dict": {}, "resume": {"best_file": None}},
               "saved/SASRec-tiny-none-seed42-abc-last.pth")
    written = artifacts.pack("results", say=print)
    assert sorted(os.path.relpath(p, "results/artifacts") for p in written) == [
        f"collaborative/{CM}", "resume/SASRec-tiny-none-seed42-abc-last.pth", "tokenizer/tiny/rqvae-abc"]
    shutil.rmtree("saved")
    shutil.rmtree(ids)
    assert artifacts.restore("results", say=print) == [ids, f"saved/collaborative/{CM}",
                                                       "saved/SASRec-tiny-none-seed42-abc-last.pth"]
    cache = f"saved/collaborative/tiny-SASRec-{config_hash(plain_config(config))}.pth"  # quick_start.cm_cache_path
    checkpoint(cache, 1.0)  # trained and cached since: nothing left to resume
    said = []
    assert artifacts.pack("results", say=said.append) == []
    assert said == ["removed results/artifacts/resume/SASRec-tiny-none-seed42-abc-last.pth (its run has finished)"]


def test_the_sft_that_a_fine_tuning_cell_trains_travels_until_a_row_names_its_best_checkpoint(tmp_path):
    os.chdir(tmp_path)
    os.makedirs("results")
    checkpoint("saved/LETTER-best-3.pth", 5.0)
    sft = "saved/LETTER-tiny-sft-seed42-def-last.pth"
    torch.save({"config": {"experiment": "table1"}, "epoch": 2, "resume": {"best_file": "saved/LETTER-best-3.pth"}},
               sft)  # no experiment_cell: the SFT run inside a cell, not the cell
    torch.save({"config": {"experiment": "table1"}, "epoch": 0, "resume": {"best_file": None}},
               "saved/LETTER-tiny-sft-seed43-def-last.pth")  # not validated yet: nothing worth keeping
    said = []
    assert artifacts.pack("results", say=said.append) == [f"results/artifacts/resume/{os.path.basename(sft)}"]
    with open("results/tiny.jsonl", "w") as f:
        f.write(json.dumps({"dataset": "tiny", "model": "LETTER", "finetune": "sft", "seed": 42, "test": {},
                            "experiment": "table1", "checkpoint": "saved/LETTER-best-3.pth"}) + "\n")
    assert artifacts.pack("results", say=said.append) == []
    assert said == [f"removed results/artifacts/resume/{os.path.basename(sft)} (its run has finished)"]
    assert os.listdir("results/artifacts/resume") == []
