"""The opt-in speed keys of the T5 training step (model/fast_t5.py): off by default (HF's own dropout and sdpa),
the fast dropout keeps p and the model's function, compile gives the eager loss."""
import os

import pytest
import torch
from torch import nn

import run_recbole_gflowgr
from gr_helpers import TINY_GR, patch_gr, with_args
from recbole_gflowgr.model.beam_search import sequence_log_probs
from recbole_gflowgr.model import fast_t5
from recbole_gflowgr.model.fast_t5 import FAST_ATTENTION, FastDropout, dropout_mask, grouped_cross_attention
from recbole_gflowgr.quick_start import load_config, prepare_data
from recbole_gflowgr.registry import get_model


def build(monkeypatch, *extra):
    args = patch_gr(monkeypatch) + with_args(TINY_GR, ["--dropout_rate=0.1", "--num_encoder_layers=2",
                                                    "--num_decoder_layers=2", *extra])  # 2: a mask reused
    config = load_config("TIGER", None, cmd_args=args)
    _, (train, _, _) = prepare_data(config)
    torch.manual_seed(0)
    return get_model("TIGER")(config, train._dataset), next(iter(train))


def loss_and_grads(model, batch, seed=0):
    torch.manual_seed(seed)
    model.zero_grad()
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_dropout_mask_keeps_one_minus_p_and_rescales():
    torch.manual_seed(0)
    mask = dropout_mask((1000, 1000), 0.1, "cpu")  # (1000, 1000)
    drop = round(0.1 * 65536)
    assert sorted(torch.unique(mask).tolist()) == [0.0, pytest.approx(65536 / (65536 - drop))]
    assert abs(float((mask == 0).float().mean()) - drop / 65536) < 2e-3  # 1e6 draws: sd 3e-4
    assert abs(float(mask.mean()) - 1.0) < 3e-3  # unbiased in expectation
    torch.manual_seed(0)
    assert torch.equal(dropout_mask((1000, 1000), 0.1, "cpu"), mask)  # torch's generator: seeded runs repeat
    assert torch.equal(dropout_mask((3, 5), 1e-9, "cpu"), torch.ones(3, 5))  # p rounded to 0: keeps everything


def test_defaults_are_hf_dropout_and_sdpa(monkeypatch):
    model, _ = build(monkeypatch)
    assert model.t5.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, FastDropout) for m in model.t5.modules())
    assert not hasattr(model.t5.forward, "_torchdynamo_orig_callable")


def test_fast_dropout_is_the_same_model(monkeypatch):
    """Same parameters and state-dict keys; in eval mode the same loss; in train mode with p -> 0 (every mask all
    ones) the written-out attention gives the eval loss and gradients (encoder, causal decoder, cross-attention)."""
    plain, batch = build(monkeypatch)
    fast, _ = build(monkeypatch, "--fast_dropout=True")
    assert fast.t5.config._attn_implementation == FAST_ATTENTION
    assert fast.t5.decoder.block[0].layer[0].SelfAttention.config._attn_implementation == FAST_ATTENTION
    assert sum(isinstance(m, FastDropout) for m in fast.t5.modules()) == sum(
        type(m) is nn.Dropout for m in plain.t5.modules())
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.load_state_dict(plain.state_dict())
    plain.eval(), fast.eval()
    expected, grads = loss_and_grads(plain, batch)
    torch.testing.assert_close(loss_and_grads(fast, batch)[0], expected, atol=1e-6, rtol=0)
    fast.train()
    for m in fast.t5.modules():
        if isinstance(m, FastDropout):
            m.p = 1e-9
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 1e-9  # > 0: the attention takes the written-out path
    loss, fast_grads = loss_and_grads(fast, batch)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_fast_dropout_groups_the_candidates_cross_attention(monkeypatch):
    """M teacher-forced candidates per user (GFlowGR, the baselines) on one copy of the encoder K/V: the log-probs,
    decoder states and gradients of the default model's M-fold copies (eval mode, and train mode with p -> 0)."""
    plain, batch = build(monkeypatch)
    fast, _ = build(monkeypatch, "--fast_dropout=True")
    fast.load_state_dict(plain.state_dict())
    ids, mask = plain.encoder_inputs(batch)  # (B, S)
    mask[0, -2:] = 0  # some padding in the cross-attention
    items = torch.randint(1, plain.n_items, (len(ids), 3), generator=torch.Generator().manual_seed(0))  # (B, M=3)
    calls = []
    monkeypatch.setattr(fast_t5, "grouped_cross_attention",
                        lambda *a, **k: calls.append(1) or grouped_cross_attention(*a, **k))

    def run(model):
        model.zero_grad()
        lp, hidden = sequence_log_probs(model.t5, ids, mask, model.trie, items - 1, return_hidden=True)
        (lp.sum() + hidden.pow(2).mean()).backward()
        return [lp.detach(), hidden.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for train in (False, True):
        plain.train(train), fast.train(train)
        for m in fast.t5.modules():
            if isinstance(m, FastDropout):
                m.p = 1e-9 * train
            elif isinstance(getattr(m, "dropout", None), float):
                m.dropout = 1e-9 * train
        for m in plain.t5.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
            elif isinstance(getattr(m, "dropout", None), float):
                m.dropout = 0.0
        expected, got = run(plain), run(fast)
        assert len(expected) == len(got) > 10
        for a, b in zip(expected, got):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert len(calls) == 2 * 2  # both decoder layers, eval and train


def test_fast_dropout_trains_with_dropout(monkeypatch):
    fast, batch = build(monkeypatch, "--fast_dropout=True")
    fast.train()
    a, grads = loss_and_grads(fast, batch, seed=1)
    b, _ = loss_and_grads(fast, batch, seed=2)
    assert torch.isfinite(a) and a != b  # other masks, other loss
    assert torch.equal(loss_and_grads(fast, batch, seed=1)[0], a)  # the same seed: the same masks
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.skipif(os.environ.get("GR_COMPILE_TESTS") != "1", reason="inductor compiles for minutes on a small CPU "
                    "(4.9 min here on 2 busy cores): run with GR_COMPILE_TESTS=1")
def test_compile_gives_the_eager_loss(monkeypatch):
    plain, batch = build(monkeypatch)
    compiled, _ = build(monkeypatch, "--compile=True")
    compiled.load_state_dict(plain.state_dict())
    plain.eval(), compiled.eval()  # no dropout: the random streams differ, the function must not
    expected, grads = loss_and_grads(plain, batch)
    loss, compiled_grads = loss_and_grads(compiled, batch)
    assert abs(float(loss) - float(expected)) < 1e-5
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_frozen_reference_of_a_compiled_model_is_its_own(monkeypatch):
    """compile: True binds the compiled ``forward`` to the policy; the baselines' frozen reference copy must not
    call it (it would run the policy's weights): it runs eager on its own (torch.compile is lazy: nothing compiles
    here)."""
    from recbole_gflowgr.finetune.common import freeze

    compiled, _ = build(monkeypatch, "--compile=True")
    assert "forward" in compiled.t5.__dict__ and "forward" in compiled.t5.get_encoder().__dict__
    ref = freeze(compiled.t5)
    assert not any("forward" in m.__dict__ for m in ref.modules())
    assert ref.forward.__self__ is ref


def test_bad_speed_key_is_one_clear_error(monkeypatch, capsys):
    args = patch_gr(monkeypatch) + with_args(TINY_GR, ["--fast_dropout=maybe"])
    assert run_recbole_gflowgr.main(["--model=TIGER"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "fast_dropout" in err[0]


def test_fast_dropout_ranks_like_the_default_model(monkeypatch):
    """Evaluation (constrained beam search with the KV cache, then full-ranking scores) of a fast_dropout model is the
    default model's for the same weights: the key only changes training's random stream, never a reported metric."""
    plain, batch = build(monkeypatch)
    fast, _ = build(monkeypatch, "--fast_dropout=True")
    fast.load_state_dict(plain.state_dict())
    plain.eval(), fast.eval()
    with torch.no_grad():
        expected, got = plain.full_sort_predict(batch), fast.full_sort_predict(batch)  # (B, n_items)
    assert expected.shape == got.shape and torch.isfinite(expected).any()
    assert torch.equal(torch.isfinite(got), torch.isfinite(expected))  # the same beams were found
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
