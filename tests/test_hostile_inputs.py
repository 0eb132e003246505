"""Hostile inputs not covered in test_foundation / test_tiger / test_tokenizer: one clear line naming the file or key
and the fix, exit status 2 from the CLI, nothing half-written under dataset/, saved/ or results."""
import json
import os

import pytest
import torch

import run_recbole_gflowgr
from gr_helpers import TINY_GR, patch_gr
from recbole_gflowgr.data import prepare_dataset, read_item_text
from recbole_gflowgr.foundation.errors import DatasetError
from test_foundation import tiny_letter, write_letter


def assert_nothing_half_written():
    """No temporary files or folders (``*.tmp*``, ``.<name>-*``) under dataset/ and saved/, no result rows."""
    for root in ("dataset", "saved"):
        for folder, dirs, files in os.walk(root):
            leftovers = [n for n in dirs + files if ".tmp" in n or n.startswith(".")]
            assert not leftovers, (folder, leftovers)
    assert not os.path.exists("res")


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("case,expect", [
    ("empty-inter-file", r"interaction file src/tiny.inter.json is empty"),
    ("empty-item-file", r"item file src/tiny.item.json is empty"),
    ("empty-inter-object", r"src/tiny.inter.json must be a non-empty object"),
    ("empty-item-object", r"src/tiny.item.json must be a non-empty object"),
    ("item-list-not-object", r"src/tiny.item.json must be a non-empty object"),
    ("item-file-not-utf8", r"src/tiny.item.json is not UTF-8"),
    ("duplicate-item-id", r"src/tiny.item.json has the id '3' twice"),
])
def test_more_bad_sources_are_one_clear_error(case, expect):
    src, inter, items = tiny_letter()
    inter_path, item_path = os.path.join(src, "tiny.inter.json"), os.path.join(src, "tiny.item.json")
    if case == "empty-inter-file":
        open(inter_path, "w").close()
    elif case == "empty-item-file":
        open(item_path, "w").close()
    elif case == "empty-inter-object":
        write_letter(src, "tiny", {}, items)
    elif case == "empty-item-object":
        write_letter(src, "tiny", inter, {})
    elif case == "item-list-not-object":
        write_letter(src, "tiny", inter, [{"title": "x"}])
    elif case == "item-file-not-utf8":
        with open(item_path, "wb") as f:
            f.write(b'{"0": {"title": "caf\xe9"}}')
    else:
        with open(item_path, "w") as f:
            f.write('{"3": {"title": "a"}, "3": {"title": "b"}}')
    with pytest.raises(DatasetError, match=expect) as err:
        prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert "\n" not in str(err.value) and str(err.value).startswith("dataset 'tiny': ")
    assert_nothing_half_written()


def test_a_bad_source_keeps_the_previous_conversion_intact():
    src, inter, items = tiny_letter()
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    before = {n: open(os.path.join("dataset/tiny", n), "rb").read() for n in os.listdir("dataset/tiny")}
    write_letter(src, "tiny", None, items, raw_inter='{"0": [1, 2, 3]')  # truncated by a crashed export
    with pytest.raises(DatasetError, match="not valid JSON"):
        prepare_dataset("tiny", "dataset/tiny", source_path=src)
    assert {n: open(os.path.join("dataset/tiny", n), "rb").read() for n in os.listdir("dataset/tiny")} == before
    assert_nothing_half_written()


def test_empty_text_fields_are_skipped_and_null_is_no_text():
    """Documented behaviour: an item may have empty (or null) text fields as long as one field has text; the
    tokenizers reject an item whose every text field is empty (test_tokenizer: item without text)."""
    src, inter, items = tiny_letter()
    items["4"]["title"] = ""
    items["5"]["title"] = None
    items["6"]["categories"] = "   "
    write_letter(src, "tiny", inter, items)
    prepare_dataset("tiny", "dataset/tiny", source_path=src)
    text = read_item_text("dataset/tiny", "tiny", ["title", "categories"])
    assert text["4"] == "categories: cat 1" and text["5"] == "categories: cat 2" and text["6"] == "title: item 6"


def test_cli_user_with_too_few_items_is_one_clear_error(capsys):
    src, inter, items = tiny_letter(n_users=60)
    inter["7"] = inter["7"][:2]
    write_letter(src, "tiny", inter, items)
    assert run_recbole_gflowgr.main(["--model=SASRec", "--dataset=tiny", f"--source_path={src}",
                                     "--results_dir=res", "--show_progress=False"]) == 2
    line = one_error_line(capsys)
    assert "user '7'" in line and "has 2 items, fewer than 3" in line and "drop such users" in line
    assert_nothing_half_written()


def test_cli_unknown_tokenizer_is_one_clear_error(monkeypatch, capsys):
    src, _, _ = tiny_letter(n_users=60, n_items=30, seq_len=7)
    args = ["--model=TIGER", "--dataset=tiny", f"--source_path={src}", "--tokenizer=vqvae"] + TINY_GR
    assert run_recbole_gflowgr.main(args) == 2
    line = one_error_line(capsys)
    assert "tokenizer=vqvae: expected one of rqvae | letter" in line
    assert_nothing_half_written()


def test_cli_pretrained_checkpoint_of_another_model_is_refused(monkeypatch, capsys):
    args = patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main(["--model=LETTER"] + args) == 0
    with open("res/tiny.jsonl") as f:
        letter_ckpt = json.loads(f.readline())["checkpoint"]
    os.rename("res", "res-letter")
    saved = set(os.listdir("saved"))
    assert run_recbole_gflowgr.main(["--model=TIGER", "--finetune=gflowgr-tb", f"--pretrained_checkpoint={letter_ckpt}"]
                                    + args) == 2
    line = one_error_line(capsys)
    assert f"pretrained_checkpoint={letter_ckpt} is a LETTER model" in line and "not TIGER" in line
    assert "point it at a matching SFT checkpoint" in line
    assert set(os.listdir("saved")) == saved  # nothing new, nothing half-written
    assert_nothing_half_written()


def test_cli_pretrained_checkpoint_that_is_not_a_checkpoint_is_refused(monkeypatch, capsys):
    args = patch_gr(monkeypatch) + TINY_GR
    torch.save({"weights": torch.zeros(2)}, "random.pth")
    assert run_recbole_gflowgr.main(["--model=TIGER", "--finetune=gflowgr-tb", "--pretrained_checkpoint=random.pth"]
                                    + args) == 2
    line = one_error_line(capsys)
    assert "pretrained_checkpoint=random.pth" in line
    assert_nothing_half_written()
