"""Trie-constrained decoding of semantic IDs with a T5 encoder-decoder.

Every item has a semantic ID of ``L`` code tokens, given as vocabulary token ids in ``codes`` (n_items, L), held
by a :class:`~recbole_gflowgr.model.trie.SemanticIDTrie` (``trie.py``, re-exported here).
The decoder starts from ``model.config.decoder_start_token_id`` and emits exactly ``L`` tokens.

Constrained forward policy
--------------------------
At every step the logits of tokens that do not extend the current prefix to a real item are set to ``-inf``
*before* the log-softmax, i.e. the next-token distribution is renormalised over the allowed children of the
prefix node.  The log-probability of an item is the sum over its ``L`` steps of this constrained log-softmax.
Beam search, :func:`sequence_log_probs` and :func:`exhaustive_log_probs` all use this same policy, so an item's
beam score equals its teacher-forced log-probability, and ``exp`` of the scores of all items sums to 1.  All take
``temperature`` (logits / tau: pass the model's, the distribution SFT trains, e.g. LETTER's tau).

Only the logits of each level's token range ``[lo_t, lo_t + width_t)`` are computed (a slice of the tied
output projection): tokens outside it are never allowed at that level, so this is the same distribution.

Decoding
--------
:func:`constrained_beam_search` runs the encoder once, the first decoder step on one row per user and the
other ``L - 1`` steps on B*K beam rows, with a Python loop over the L steps only.  Its default ``"grouped"``
step reuses the T5 sub-modules with a self-attention KV cache and one copy of the cross-attention keys/values
per user (not per beam); ``"cache"`` (HF ``EncoderDecoderCache``) and ``"recompute"`` (no cache) are reference
paths built on the HF decoder forward and give the same result (the three steps: ``decoder_steps.py``).  Two shortcuts that do not change the result:
``length_groups`` splits the users into groups of similar history length, each trimmed to its own longest one,
and the last level runs the decoder only for prefixes with two or more children (a single child has
log-probability exactly 0; with TIGER's disambiguation level as the last one, that is most beams).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from recbole_gflowgr.model.decoder_steps import STEPPERS, cross_keys_values
from recbole_gflowgr.model.fast_t5 import FAST_ATTENTION
from recbole_gflowgr.model.trie import SemanticIDTrie, constrained_log_softmax

__all__ = [
    "SemanticIDTrie",
    "constrained_log_softmax",
    "constrained_beam_search",
    "sequence_log_probs",
    "exhaustive_log_probs",
    "encode",
]


def encode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Encoder last hidden state (B, S, d)."""
    return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _encoder_states(model, input_ids, attention_mask, encoder_outputs):
    """(B, S, d) encoder states from ``encoder_outputs`` (tensor or ModelOutput) or by running the encoder."""
    if encoder_outputs is None:
        return encode(model, input_ids, attention_mask)
    if torch.is_tensor(encoder_outputs):
        return encoder_outputs
    return encoder_outputs[0]


def _level_logits(model, trie: SemanticIDTrie, level: int, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Logits (..., width_level) of the level's token range from decoder states (..., d), as the LM head does,
    divided by ``temperature``."""
    head = model.get_output_embeddings()
    config = model.config
    scale = getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", False))
    if scale:
        hidden = hidden * (config.d_model ** -0.5)
    lo, hi = trie.lo[level], trie.lo[level] + trie.width[level]
    bias = head.bias[lo:hi] if getattr(head, "bias", None) is not None else None
    logits = F.linear(hidden, head.weight[lo:hi], bias)
    return logits if temperature == 1.0 else logits / temperature


def _level_log_probs(model, trie, level, hidden, nodes, temperature=1.0):
    """Constrained log-probs (R, W) and child ids (R, W) for decoder states (R, d) at prefix ``nodes`` (R,)."""
    children = trie.children(level, nodes)  # (R, W)
    logp = constrained_log_softmax(_level_logits(model, trie, level, hidden, temperature), children >= 0)
    return logp, children


def _by_length(search, input_ids, attention_mask, groups):
    """``search(ids, mask)`` run on ``groups`` groups of users sorted by history extent (last unmasked position),
    each trimmed to its longest; its (items, scores), both (B, K), put back in the users' order."""
    S = attention_mask.shape[1]
    extent = (attention_mask.bool() * torch.arange(1, S + 1, device=attention_mask.device)).amax(dim=1)  # (B,)
    order = torch.argsort(extent, stable=True)
    items = scores = None
    for rows in torch.tensor_split(order, min(groups, len(order))):
        n = max(1, int(extent[rows].max()))
        i, sc = search(input_ids[rows, :n], attention_mask[rows, :n])  # (b, K)
        if items is None:
            items = i.new_empty((len(order), i.shape[1]))
            scores = sc.new_empty((len(order), sc.shape[1]))
        items[rows], scores[rows] = i, sc
    return items, scores


def _last_level_log_probs(model, trie, stepper, seq, nodes, temperature=1.0):
    """Constrained log-probs (R, W) and child ids (R, W) of the last level. A prefix with one child gives it
    log-probability exactly 0 (the constrained softmax of one token), so the decoder runs only on the rows whose
    prefix has two or more children: with TIGER's disambiguation token as the last level, a few percent of them."""
    level = trie.L - 1
    children = trie.children(level, nodes)  # (R, W)
    allowed = children >= 0
    n_kids = allowed.sum(dim=1)  # (R,)
    logp = torch.zeros(children.shape, device=children.device).masked_fill_(~allowed, float("-inf"))  # (R, W)
    rows = (n_kids > 1).nonzero().squeeze(1)  # (r,)
    if len(rows):
        h = stepper.step(seq, rows=rows)  # (r, d)
        logp[rows] = constrained_log_softmax(_level_logits(model, trie, level, h, temperature), allowed[rows])
    return logp, children


@torch.no_grad()
def constrained_beam_search(model, input_ids, attention_mask, trie: SemanticIDTrie, beam_size: int,
                            encoder_outputs=None, mode: str = "grouped", length_groups: int = 1,
                            temperature: float = 1.0):
    """Trie-constrained beam search over semantic IDs, batched over users.

    Args:
        model: a ``T5ForConditionalGeneration`` in eval mode (this runs under ``no_grad``; the default mode
            applies no dropout).
        input_ids, attention_mask: (B, S) encoder inputs (history tokens).
        trie: :class:`SemanticIDTrie` on the model's device.
        beam_size: number of beams K >= 1 (= number of returned items).
        encoder_outputs: optional precomputed encoder states (B, S, d) or a ModelOutput holding them.
        mode: ``"grouped"`` (default, fastest): incremental decoder step with a self-attention KV cache and
            cross-attention keys/values shared by a user's beams; ``"cache"``: the HF decoder with an
            ``EncoderDecoderCache`` (cross K/V copied per beam); ``"recompute"``: the HF decoder re-run on the
            whole prefix each step (no cache; reference).  All three give the same result.
        length_groups: split the users into this many groups of similar history length (by ``attention_mask``),
            each trimmed to its own longest history, so that short histories are not encoded and attended at
            the batch's longest length; the same result (up to float rounding).  Ignored with ``encoder_outputs``.
        temperature: logits / temperature at every level (the model's: the distribution SFT trains).

    Returns:
        items (B, K) LongTensor of item indices sorted by descending constrained log-probability, and scores
        (B, K) float32 (sum of the constrained log-softmax over the L steps).  When fewer than K items exist,
        the missing slots hold item -1 and score -inf.

    The encoder runs once and the first decoder step on B rows; then every user carries K beams (B*K rows).
    Beams only move within their user, so only the self-attention cache is reordered.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if mode not in STEPPERS:
        raise ValueError(f"mode must be one of {sorted(STEPPERS)}, got {mode!r}")
    if length_groups > 1 and encoder_outputs is None and attention_mask is not None and len(attention_mask) > 1:
        return _by_length(lambda ids, mask: constrained_beam_search(model, ids, mask, trie, beam_size, mode=mode,
                                                                    temperature=temperature),
                          input_ids, attention_mask, length_groups)
    K, L = int(beam_size), trie.L
    enc = _encoder_states(model, input_ids, attention_mask, encoder_outputs)  # (B, S, d)
    B, device = enc.shape[0], enc.device
    stepper = STEPPERS[mode](model, enc, attention_mask)
    start = torch.full((B, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)  # (B, 1)

    # step 0: one row per user (all beams share the start token)
    logp, children = _level_log_probs(model, trie, 0, stepper.step(start), start.new_zeros(B), temperature)  # (B, W0)
    k0 = min(K, trie.width[0])
    scores, tok = logp.topk(k0, dim=-1)  # (B, k0)
    nodes = children.gather(1, tok)  # (B, k0)
    if k0 < K:  # pad with dead beams
        scores = torch.cat([scores, scores.new_full((B, K - k0), float("-inf"))], dim=1)
        nodes = torch.cat([nodes, nodes.new_full((B, K - k0), -1)], dim=1)
        tok = torch.cat([tok, tok.new_zeros(B, K - k0)], dim=1)
    seq = torch.cat([start.expand(B, K).unsqueeze(-1), (tok + trie.lo[0]).unsqueeze(-1)], dim=-1)  # (B, K, 2)

    R = B * K
    if L > 1:
        stepper.expand(K)
    offsets = torch.arange(B, device=device).unsqueeze(1) * K  # (B, 1)
    for t in range(1, L):
        if t < L - 1:
            h = stepper.step(seq.reshape(R, t + 1))  # (R, d)
            logp, children = _level_log_probs(model, trie, t, h, nodes.reshape(R), temperature)  # (R, W), (R, W)
        else:
            logp, children = _last_level_log_probs(model, trie, stepper, seq.reshape(R, t + 1), nodes.reshape(R),
                                                   temperature)
        W = trie.width[t]
        total = (scores.unsqueeze(-1) + logp.view(B, K, W)).view(B, K * W)  # (B, K*W)
        scores, idx = total.topk(K, dim=-1)  # (B, K); K <= K*W
        parent, tok = idx // W, idx % W  # (B, K)
        nodes = children.view(B, K * W).gather(1, idx)  # (B, K)
        seq = torch.cat([seq.gather(1, parent.unsqueeze(-1).expand(-1, -1, t + 1)),
                         (tok + trie.lo[t]).unsqueeze(-1)], dim=-1)  # (B, K, t + 2)
        if t < L - 1:
            stepper.reorder((parent + offsets).reshape(R))

    valid = nodes >= 0  # at the last level child ids are item indices
    items = torch.where(valid, nodes, torch.full_like(nodes, -1))
    scores = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    return items, scores


def _shared_encoder_decode(model, dec_in, enc, attention_mask, M):
    """Decoder states (B*M, L, d) of M teacher-forced sequences per user. The cross-attention keys/values of each
    layer are projected once per user (B, H, S, d_kv) and repeated for the M sequences through a pre-filled HF
    ``EncoderDecoderCache``, instead of being projected again for every copy of the encoder states; the same
    computation and gradients (train mode included: T5 has no dropout on the key/value side)."""
    decoder = model.get_decoder()
    mask = attention_mask.repeat_interleave(M, dim=0) if attention_mask is not None else None
    cache, states = None, enc
    if M > 1:
        config = decoder.config
        cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        grouped = config._attn_implementation == FAST_ATTENTION  # fast_dropout: one K/V copy per user
        for i, (k, v) in enumerate(cross_keys_values(decoder, enc)):  # (B, H, S, dk) -> (B*M, H, S, dk)
            if not grouped:
                k, v = k.repeat_interleave(M, dim=0), v.repeat_interleave(M, dim=0)
            cache.cross_attention_cache.update(k, v, i)
            cache.is_updated[i] = True
        # every layer reads its cross K/V from the cache, so HF only needs the states' shape: a zero-stride view
        # instead of an M-fold copy of them (and of its backward); the same result, bit for bit
        states = enc.new_zeros(()).expand(enc.shape[0] * M, *enc.shape[1:])  # (B*M, S, d), no memory
    return decoder(input_ids=dec_in, encoder_hidden_states=states, encoder_attention_mask=mask, cache=cache,
                   use_cache=cache is not None).last_hidden_state


def sequence_log_probs(model, input_ids, attention_mask, trie: SemanticIDTrie, target_items: torch.Tensor,
                       encoder_outputs=None, return_steps: bool = False, return_hidden: bool = False,
                       temperature: float = 1.0):
    """Teacher-forced constrained log-probability of M candidate items per user (differentiable).

    Args:
        model: a ``T5ForConditionalGeneration`` (train or eval mode; gradients flow to all its parameters).
        input_ids, attention_mask: (B, S) encoder inputs; ``input_ids`` may be None when ``encoder_outputs``
            (B, S, d) is given (``attention_mask`` is still needed for the cross-attention).
        trie: :class:`SemanticIDTrie` on the model's device.
        target_items: (B, M) item indices (a (B,) tensor is treated as M = 1 and squeezed back);
            entries -1 are padding and get log-probability -inf.
        return_steps: also return the per-step constrained log-probs (B, M, L).
        return_hidden: also return the decoder final hidden states (B, M, L, d): position t is the state
            after reading the start token and the first t code tokens, i.e. the state that predicts token t
            (after the decoder's final layer norm, before the LM head's rescaling).
        temperature: logits / temperature before the constrained log-softmax (the model's ``temperature``).

    Returns:
        log_probs (B, M); with extras a tuple ``(log_probs, steps?, hidden?)`` in that order.

    The encoder runs once per user, and each decoder layer's cross-attention keys/values once per user; they are
    repeated for the user's M candidates.
    """
    squeeze = target_items.dim() == 1
    targets = target_items.unsqueeze(1) if squeeze else target_items  # (B, M)
    B, M = targets.shape
    L = trie.L
    enc = _encoder_states(model, input_ids, attention_mask, encoder_outputs)  # (B, S, d)
    valid = (targets >= 0) & (targets < trie.n_items)  # (B, M)
    safe = torch.where(valid, targets, torch.zeros_like(targets)).reshape(B * M)
    tokens = trie.codes[safe]  # (B*M, L)
    nodes = trie.item_nodes[safe]  # (B*M, L)
    start = tokens.new_full((B * M, 1), model.config.decoder_start_token_id)
    dec_in = torch.cat([start, tokens[:, :-1]], dim=1)  # (B*M, L)
    hidden = _shared_encoder_decode(model, dec_in, enc, attention_mask, M)  # (B*M, L, d)

    steps = []
    for t in range(L):
        logp, _ = _level_log_probs(model, trie, t, hidden[:, t], nodes[:, t], temperature)  # (B*M, W_t)
        steps.append(logp.gather(1, (tokens[:, t] - trie.lo[t]).unsqueeze(1)).squeeze(1))  # (B*M,)
    steps = torch.stack(steps, dim=1).view(B, M, L)  # (B, M, L)
    steps = steps.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    total = steps.sum(dim=-1)  # (B, M)

    hidden = hidden.view(B, M, L, -1)  # (B, M, L, d)
    if squeeze:
        total, steps, hidden = total.squeeze(1), steps.squeeze(1), hidden.squeeze(1)
    extras = ([steps] if return_steps else []) + ([hidden] if return_hidden else [])
    return (total, *extras) if extras else total


@torch.no_grad()
def exhaustive_log_probs(model, input_ids, attention_mask, trie: SemanticIDTrie, chunk_size: int = 512,
                         encoder_outputs=None, temperature: float = 1.0) -> torch.Tensor:
    """Constrained log-probability (B, n_items) of every item for every user (no grad, items in chunks)."""
    enc = _encoder_states(model, input_ids, attention_mask, encoder_outputs)  # (B, S, d)
    B = enc.shape[0]
    out = []
    for s in range(0, trie.n_items, chunk_size):
        items = torch.arange(s, min(s + chunk_size, trie.n_items), device=enc.device)
        out.append(sequence_log_probs(model, None, attention_mask, trie, items.unsqueeze(0).expand(B, -1),
                                      encoder_outputs=enc, temperature=temperature))
    return torch.cat(out, dim=1)  # (B, n_items)
