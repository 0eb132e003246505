"""Trie-constrained beam search, teacher-forced log-probs and the semantic-ID trie (small random T5s)."""
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import T5Config, T5ForConditionalGeneration

from recbole_gflowgr.model.beam_search import (
    SemanticIDTrie,
    constrained_beam_search,
    encode,
    exhaustive_log_probs,
    sequence_log_probs,
)

MAX_LEVEL = 6  # hypothesis tries use levels of at most 6 codes, 4 levels at most
PROP_VOCAB = 2 + 4 * MAX_LEVEL



def make_model(vocab, layers=1, seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=32, d_ff=64, num_layers=layers, num_decoder_layers=layers,
                   num_heads=2, d_kv=16, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


@functools.lru_cache(maxsize=None)
def prop_model():
    return make_model(PROP_VOCAB, layers=2, seed=1)


def random_codes(sizes, n, gen, stride=None):
    """Distinct random IDs (<= n rows); level t uses tokens 2 + offset_t .. + sizes[t] (many shared prefixes)."""
    offsets, off = [], 2
    for s in sizes:
        offsets.append(off)
        off += stride or s
    cols = [torch.randint(0, s, (n,), generator=gen) + o for s, o in zip(sizes, offsets)]
    codes = torch.unique(torch.stack(cols, dim=1), dim=0)
    return codes[torch.randperm(codes.shape[0], generator=gen)]


def random_inputs(B, S, vocab, gen):
    ids = torch.randint(2, vocab, (B, S), generator=gen)
    lengths = torch.randint(1, S + 1, (B,), generator=gen)
    mask = (torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return ids * mask, mask


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 4, 5]
    codes = random_codes(sizes, 45, gen)
    model = make_model(2 + sum(sizes), layers=2)
    ids, mask = random_inputs(4, 9, 2 + sum(sizes), gen)
    return model, SemanticIDTrie(codes), ids, mask


def test_trie_tables():
    codes = torch.tensor([[2, 5, 9], [2, 5, 10], [2, 6, 9], [3, 5, 9]])
    trie = SemanticIDTrie(codes)
    assert trie.n_nodes == [1, 2, 3] and trie.lo == [2, 5, 9] and trie.width == [2, 2, 2]
    assert trie.children(0, torch.tensor([0])).tolist() == [[0, 1]]
    # every item's path ends at its own index; the dead node (-1) has no children
    node = torch.zeros(4, dtype=torch.long)
    for t in range(3):
        node = trie.children(t, node).gather(1, (codes[:, t] - trie.lo[t]).unsqueeze(1)).squeeze(1)
    assert node.tolist() == [0, 1, 2, 3]
    assert (trie.children(2, torch.tensor([-1])) == -1).all()
    with pytest.raises(ValueError):
        SemanticIDTrie(torch.tensor([[2, 5], [2, 5]]))


def test_matches_full_model_forward(setup):
    """Our sliced-head constrained log-probs equal masking the model's own full-vocab logits."""
    model, trie, ids, mask = setup
    ex = exhaustive_log_probs(model, ids, mask, trie, chunk_size=16)  # (B, n_items)
    B, n = ex.shape
    assert torch.allclose(ex.exp().sum(1), torch.ones(B), atol=1e-5)
    tokens = trie.codes.unsqueeze(0).expand(B, -1, -1).reshape(B * n, trie.L)
    dec_in = torch.cat([torch.zeros(B * n, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                       decoder_input_ids=dec_in).logits  # (B*n, L, V)
    ref = torch.zeros(B * n)
    for t in range(trie.L):
        allowed = torch.zeros_like(logits[:, t], dtype=torch.bool)
        kids = trie.children(t, trie.item_nodes[:, t]).repeat(B, 1)  # (B*n, W)
        allowed[:, trie.lo[t]:trie.lo[t] + trie.width[t]] = kids >= 0
        logp = torch.log_softmax(logits[:, t].masked_fill(~allowed, float("-inf")), -1)
        ref += logp.gather(1, tokens[:, t:t + 1]).squeeze(1)
    assert torch.allclose(ex, ref.view(B, n), atol=1e-5)


def test_full_beam_equals_exhaustive_ranking(setup):
    model, trie, ids, mask = setup
    items, scores = constrained_beam_search(model, ids, mask, trie, beam_size=trie.n_items)
    ex = exhaustive_log_probs(model, ids, mask, trie)
    ref_scores, ref_items = ex.sort(dim=1, descending=True)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    assert (items.sort(1).values == torch.arange(trie.n_items)).all()
    assert torch.allclose(ex.gather(1, items), scores, atol=1e-5)
    gaps = ref_scores[:, :-1] - ref_scores[:, 1:]
    untied = torch.cat([gaps > 1e-5, torch.ones(gaps.shape[0], 1, dtype=torch.bool)], 1)
    untied &= torch.cat([torch.ones(gaps.shape[0], 1, dtype=torch.bool), gaps > 1e-5], 1)
    assert (items[untied] == ref_items[untied]).all()


def test_kv_cache_equals_recomputation(setup):
    """Grouped incremental step, HF EncoderDecoderCache and no-cache recomputation agree."""
    model, trie, ids, mask = setup
    for k in (1, 4, 7):
        i0, s0 = constrained_beam_search(model, ids, mask, trie, k, mode="recompute")
        for mode in ("grouped", "cache"):
            i1, s1 = constrained_beam_search(model, ids, mask, trie, k, mode=mode)
            assert (i1 == i0).all() and torch.allclose(s1, s0, atol=1e-5), mode


def test_batch_equals_single_users_and_encoder_outputs(setup):
    model, trie, ids, mask = setup
    items, scores = constrained_beam_search(model, ids, mask, trie, 6)
    for b in range(ids.shape[0]):
        i, s = constrained_beam_search(model, ids[b:b + 1], mask[b:b + 1], trie, 6)
        assert (i[0] == items[b]).all() and torch.allclose(s[0], scores[b], atol=1e-5)
    with torch.no_grad():
        enc = encode(model, ids, mask)
    i, s = constrained_beam_search(model, None, mask, trie, 6, encoder_outputs=enc)
    assert (i == items).all() and torch.allclose(s, scores)


def test_length_groups_give_the_same_beams(setup):
    """Users split into groups of similar history length, each trimmed to its longest: same items and scores in
    the users' order, also with more groups than users and with histories that are not right-padded."""
    model, trie, ids, mask = setup
    ref_items, ref_scores = constrained_beam_search(model, ids, mask, trie, 6)
    holes = mask.clone()
    holes[0, 0] = 0  # a masked position before the last unmasked one: groups trim by extent, not by count
    hole_items, hole_scores = constrained_beam_search(model, ids, holes, trie, 6)
    for groups in (2, 3, 10):
        items, scores = constrained_beam_search(model, ids, mask, trie, 6, length_groups=groups)
        assert (items == ref_items).all() and torch.allclose(scores, ref_scores, atol=1e-5)
        items, scores = constrained_beam_search(model, ids, holes, trie, 6, length_groups=groups)
        assert (items == hole_items).all() and torch.allclose(scores, hole_scores, atol=1e-5)


def test_disambiguation_level_equals_exhaustive():
    """TIGER-like IDs: the last level is a collision index, so most prefixes have one child (log-prob exactly 0,
    the decoder is not run for them) and a few have several; the full beam is still the exhaustive ranking."""
    gen = torch.Generator().manual_seed(3)
    prefix = random_codes([4, 4], 12, gen)  # (n, 2) distinct prefixes
    rows = [p.tolist() + [10] for p in prefix] + [prefix[0].tolist() + [11], prefix[0].tolist() + [12],
                                                    prefix[1].tolist() + [11]]
    codes = torch.tensor(rows)  # level 3 tokens 10..12: index among the items that share the prefix
    trie = SemanticIDTrie(codes)
    kids = (trie.child[2][:-1] >= 0).sum(1)
    assert (kids == 1).sum() >= 8 and (kids > 1).sum() == 2
    model = make_model(13, layers=2)
    ids, mask = random_inputs(5, 7, 13, gen)
    items, scores = constrained_beam_search(model, ids, mask, trie, beam_size=trie.n_items)
    ex = exhaustive_log_probs(model, ids, mask, trie)
    assert torch.allclose(ex.gather(1, items), scores, atol=1e-5)
    assert torch.allclose(scores, ex.sort(dim=1, descending=True).values, atol=1e-5)
    i0, s0 = constrained_beam_search(model, ids, mask, trie, 4, mode="recompute")
    i1, s1 = constrained_beam_search(model, ids, mask, trie, 4)
    assert (i1 == i0).all() and torch.allclose(s1, s0, atol=1e-5)


def test_gradients_flow_through_sequence_log_probs(setup):
    model, trie, ids, mask = setup
    model.train()
    targets = torch.tensor([[0, 5, -1], [1, 2, 3], [4, -1, -1], [7, 8, 9]])  # -1 = padding
    lp, steps, hidden = sequence_log_probs(model, ids, mask, trie, targets, return_steps=True, return_hidden=True)
    assert lp.shape == (4, 3) and steps.shape == (4, 3, trie.L) and hidden.shape == (4, 3, trie.L, 32)
    assert torch.isinf(lp[targets < 0]).all() and torch.isfinite(lp[targets >= 0]).all()
    assert torch.allclose(steps.sum(-1)[targets >= 0], lp[targets >= 0])
    loss = -lp[targets >= 0].sum() + hidden.pow(2).mean()
    loss.backward()
    enc_grad = model.get_encoder().block[0].layer[0].SelfAttention.q.weight.grad
    dec_grad = model.get_decoder().block[-1].layer[-1].DenseReluDense.wo.weight.grad
    for g in (enc_grad, dec_grad, model.shared.weight.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert sequence_log_probs(model, ids, mask, trie, targets[:, 0]).shape == (4,)


def test_shared_cross_attention_equals_repeated_encoder_states_in_train_mode(setup):
    """Cross-attention K/V projected once per user (sequence_log_probs) = the plain decoder on M copies of the
    encoder states: same states and same gradients, with dropout on (same RNG draws)."""
    model, trie, ids, mask = setup
    model.train()
    targets = torch.tensor([[0, 5, 6], [1, 2, 3], [4, 10, 11], [7, 8, 9]])  # (B, M=3)
    enc = encode(model, ids, mask)

    def plain():
        tokens = trie.codes[targets.reshape(-1)]  # (B*M, L)
        dec_in = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        return model.get_decoder()(input_ids=dec_in, encoder_hidden_states=enc.repeat_interleave(3, dim=0),
                                   encoder_attention_mask=mask.repeat_interleave(3, dim=0),
                                   use_cache=False).last_hidden_state.view(4, 3, trie.L, -1)

    def shared():
        return sequence_log_probs(model, None, mask, trie, targets, encoder_outputs=enc, return_hidden=True)[1]

    grads = []
    for run in (plain, shared):
        model.zero_grad()
        torch.manual_seed(7)
        hidden = run()
        hidden.pow(2).sum().backward(retain_graph=True)
        grads.append((hidden.detach(), model.get_decoder().block[0].layer[1].EncDecAttention.k.weight.grad.clone(),
                      model.get_encoder().block[0].layer[0].SelfAttention.q.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shared_cross_attention_is_bit_identical_to_the_copied_encoder_states(setup):
    """The decoder's encoder states as a zero-stride view (their values are never read: every layer's cross K/V
    comes from the cache) give the states and gradients of the previous way, an M-fold copy, bit for bit."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from recbole_gflowgr.model.decoder_steps import cross_keys_values

    model, trie, ids, mask = setup
    model.train()
    targets = torch.tensor([[0, 5, 6], [1, 2, 3], [4, 10, 11], [7, 8, 9]])  # (B, M=3)

    def previous():
        enc = encode(model, ids, mask)
        tokens = trie.codes[targets.reshape(-1)]  # (B*M, L)
        dec_in = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        decoder = model.get_decoder()
        cache = EncoderDecoderCache(DynamicCache(config=decoder.config), DynamicCache(config=decoder.config))
        for i, (k, v) in enumerate(cross_keys_values(decoder, enc)):
            cache.cross_attention_cache.update(k.repeat_interleave(3, dim=0), v.repeat_interleave(3, dim=0), i)
            cache.is_updated[i] = True
        return decoder(input_ids=dec_in, encoder_hidden_states=enc.repeat_interleave(3, dim=0),
                       encoder_attention_mask=mask.repeat_interleave(3, dim=0), cache=cache,
                       use_cache=True).last_hidden_state.view(4, 3, trie.L, -1)

    def ours():
        return sequence_log_probs(model, ids, mask, trie, targets, return_hidden=True)[1]

    results = []
    for run in (previous, ours):
        model.zero_grad()
        torch.manual_seed(7)  # the same dropout masks
        hidden = run()
        hidden.pow(2).sum().backward()
        results.append([hidden.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 10
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_beam_size_validation(setup):
    model, trie, ids, mask = setup
    with pytest.raises(ValueError):
        constrained_beam_search(model, ids, mask, trie, 0)
    with pytest.raises(ValueError):
        constrained_beam_search(model, ids, mask, trie, 2, mode="fast")


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, MAX_LEVEL), min_size=1, max_size=4),
    n=st.integers(1, 40),
    beam=st.integers(1, 50),
    B=st.integers(1, 3),
    S=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_beam_search_properties(sizes, n, beam, B, S, seed):
    gen = torch.Generator().manual_seed(seed)
    trie = SemanticIDTrie(random_codes(sizes, n, gen, stride=MAX_LEVEL))
    model = prop_model()
    ids, mask = random_inputs(B, S, PROP_VOCAB, gen)
    items, scores = constrained_beam_search(model, ids, mask, trie, beam)
    assert items.shape == scores.shape == (B, beam)
    valid = items >= 0
    assert (items < trie.n_items).all()
    assert (valid.sum(1) == min(beam, trie.n_items)).all()
    assert torch.isneginf(scores[~valid]).all() and torch.isfinite(scores[valid]).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for b in range(B):
        row = items[b][valid[b]]
        assert row.unique().numel() == row.numel()
    # scores are the teacher-forced constrained log-probs of the returned items
    i2, s2 = constrained_beam_search(model, ids, mask, trie, beam, mode="recompute")
    assert (i2 == items).all() and torch.allclose(s2, scores, atol=1e-5)
    ref = sequence_log_probs(model, ids, mask, trie, items).detach()
    assert torch.allclose(ref[valid], scores[valid], atol=1e-5)
    if beam >= trie.n_items:  # exhaustive: the best item overall is first
        best = exhaustive_log_probs(model, ids, mask, trie).max(1).values
        assert torch.allclose(scores[:, 0], best, atol=1e-5)
