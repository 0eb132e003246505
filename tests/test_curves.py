"""Fine-tuning curves (``python -m recbole_gflowgr.curves``): runs grouped by their SFT checkpoint beside the control."""
import struct

import pytest

from recbole_gflowgr import curves
from recbole_gflowgr.trainer.results import append_row


def row(finetune, seed=42, curve=(), checkpoint="saved/sft/a.pth", variant=None, model="TIGER", **extra):
    out = {"dataset": "d", "model": model, "finetune": finetune, "seed": seed, "experiment_variant": variant,
           "valid": {"ndcg@10": max(curve) if curve else 0.5}, "test": {"ndcg@10": 0.1},
           "valid_curve": [{"epoch": i + 1, "ndcg@10": v, "elapsed_s": 10.0 * (i + 1)} for i, v in enumerate(curve)],
           "best_epoch": 1 + list(curve).index(max(curve)) if curve else None}
    if finetune == "sft":
        out["sft_cache"] = checkpoint
    else:
        out["pretrained"] = checkpoint
    out.update(extra)
    return out


def rows():
    return [row("sft", curve=(0.30, 0.50, 0.60)),
            row("gflowgr-tb", curve=(0.55, 0.58, 0.59)),
            row("gflowgr-tb", curve=(0.61, 0.62, 0.60), variant="gflowgr_lambda=0.025"),
            row("dpo", curve=(0.40,)),
            row("sft-continued", curve=(0.60, 0.61, 0.605)),
            row("sft-continued", seed=43, curve=(0.7,), checkpoint="saved/sft/b.pth"),  # its SFT row is missing
            row("gflowgr-tb", seed=43, curve=(), checkpoint="saved/sft/b.pth")]  # no curve: left out


def test_runs_are_grouped_by_checkpoint_control_first_then_gflowgr():
    found = curves.panels(rows())
    assert list(found) == [("d", "TIGER", 42, "saved/sft/a.pth"), ("d", "TIGER", 43, "saved/sft/b.pth")]
    first = found[("d", "TIGER", 42, "saved/sft/a.pth")]
    assert first["sft"]["finetune"] == "sft"
    assert [curves.label(r) for r in first["runs"]] == [
        "sft-continued", "gflowgr-tb", "gflowgr-tb [gflowgr_lambda=0.025]", "dpo"]
    assert found[("d", "TIGER", 43, "saved/sft/b.pth")]["sft"] is None


def test_summary_gives_each_runs_best_valid_and_its_difference_from_the_control():
    assert curves.summary(curves.panels(rows())) == [
        "d TIGER seed 42: valid ndcg@10 best: SFT 0.6000; sft-continued 0.6100, gflowgr-tb 0.5900 (-0.0200), "
        "gflowgr-tb [gflowgr_lambda=0.025] 0.6200 (+0.0100), dpo 0.4000 (-0.2100)",
        "d TIGER seed 43: valid ndcg@10 best: sft-continued 0.7000"]


def test_cli_writes_one_png_per_dataset_and_a_clear_error_without_rows(tmp_path, capsys):
    for r in rows():
        append_row(r, "res")
    curves.main(["--results_dir=res", f"--out={tmp_path}"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(tmp_path / "finetune-curves-d.png") and len(printed) == 3
    with open(printed[-1], "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24])[0] > 0
    assert curves.main(["--results_dir=empty"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no fine-tuning rows with a valid_curve in empty/") and "\n" not in err
