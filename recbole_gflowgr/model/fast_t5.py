"""Opt-in speed-ups of the T5 training step (``fast_dropout``, ``compile``; both off by default, so the default run's
numerics and random stream are those of plain HF T5). Measured by ``benchmarks/train_speed.py`` (docs/benchmarks.md).

* ``fast_dropout``: every dropout of the T5 in training mode (its ``nn.Dropout`` modules and the attention-probability
  dropout) draws its mask from 16-bit random integers, four per 64-bit draw of torch's generator, instead of torch's
  ``bernoulli_`` (one draw per element; the profile's largest op after the matmuls). The drop probability is rounded
  to a multiple of 1/65536 (0.1 -> 0.100006); the masks are another random stream, so results are not bit-equal to
  a default run. Attention runs as HF's sdpa path does (position bias and padding as an additive float mask,
  softmax, dropout, @ V) but with this dropout; without dropout (eval, p = 0) it is HF's sdpa call itself. The M
  teacher-forced candidates per user of GFlowGR and the baselines (``beam_search.sequence_log_probs``) then attend
  to one copy of the user's encoder K/V (:func:`grouped_cross_attention`), the same function up to float rounding.
* ``compile``: ``torch.compile`` (inductor) of the T5 ``forward`` (and so its backward), with dynamic shapes (the
  length groups change the sequence length every call). Inductor draws dropout masks with its own generator, so
  the random stream changes; without dropout the loss equals eager within float rounding
  (tests/test_fast_t5.py checks 1e-5). The first steps pay the compilation (minutes on a small CPU).
"""
import torch
from torch import nn
from transformers.integrations.sdpa_attention import create_position_bias_mask, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

FAST_ATTENTION = "gr_fast_dropout"  # the HF attention implementation registered below


def dropout_mask(shape, p, device, dtype=torch.float32):
    """(shape) float mask of ``1 / (1 - p')`` (kept) and 0 (dropped), p' = round(p * 65536) / 65536, from 16-bit
    integers cut out of 64-bit draws of torch's default generator (four mask entries per draw)."""
    n = 1
    for s in shape:
        n *= int(s)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)  # full 64-bit range
    r = bits.view(torch.int16)[:n].view(shape)  # each uniform over [-32768, 32767]
    drop = int(round(p * 65536))
    keep = r >= drop - 32768  # P(keep) = 1 - drop / 65536
    return keep.to(dtype).mul_(65536.0 / (65536 - drop))


def fast_dropout(x, p, training=True):
    """Dropout of ``x`` with :func:`dropout_mask` (gradient: the same mask); identity when not training or p = 0."""
    if not training or p == 0:
        return x
    return x * dropout_mask(x.shape, p, x.device, x.dtype)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`fast_dropout`."""

    def forward(self, x):
        return fast_dropout(x, self.p, self.training)


_LAST_BIAS = [None, None, None, None]  # (position bias, mask, causal, additive mask) of the last call: T5 passes the
# same position bias and mask to every layer of a stack, so the additive mask is built once per stack, not per layer


def additive(mask, dtype):
    """A bool mask (True = attend) as an additive float mask (0 / the dtype's min); a float mask as it is."""
    if mask.dtype != torch.bool:
        return mask
    return torch.where(mask, 0.0, torch.finfo(dtype).min).to(dtype)


def fast_dropout_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           position_bias=None, **kwargs):
    """HF attention interface (B, H, Q, d_kv) -> ((B, Q, H, d_kv), None): HF's sdpa without dropout; with dropout,
    the same computation written out so that the probabilities go through :func:`fast_dropout`."""
    dropout = dropout if module.training else 0.0
    if key.shape[0] != query.shape[0]:  # one copy of the encoder's K/V per user, M decoder rows per user
        return grouped_cross_attention(query, key, value, attention_mask, dropout, scaling)
    if dropout == 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and is_causal
    key_ = (position_bias, attention_mask, causal)
    tensors = position_bias is not None or attention_mask is not None
    if tensors and all(a is b for a, b in zip(key_, _LAST_BIAS[:3])):  # the next layer of a stack: the same mask
        bias = _LAST_BIAS[3]
    elif position_bias is not None:
        bias = create_position_bias_mask(position_bias, attention_mask, causal, query, key)  # (B|1, H, Q, K) additive
    elif attention_mask is not None:
        bias = additive(attention_mask, query.dtype)
    elif causal:
        q, k = query.shape[2], key.shape[2]
        bias = additive(torch.arange(q, device=query.device)[:, None] >= torch.arange(k, device=query.device)[None, :],
                        query.dtype)
    else:
        bias = None
    _LAST_BIAS[:] = [*key_, bias]
    scores = torch.matmul(query, key.transpose(2, 3))  # (B, H, Q, K)
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    if bias is not None:
        scores = scores + bias
    probs = fast_dropout(torch.softmax(scores.float(), dim=-1).to(value.dtype), dropout)  # (B, H, Q, K)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def grouped_cross_attention(query, key, value, attention_mask, dropout=0.0, scaling=None):
    """Cross-attention of M decoder rows per user (R = B * M rows, user b's are b*M .. b*M + M - 1) to one copy
    of each user's encoder K/V (B, H, S, d_kv): the M * Q queries of a user form one (M * Q, S) score matrix, so K/V
    are neither copied M times nor multiplied in M small blocks. ``attention_mask``: the decoder's (R, 1, Q, S)
    padding mask (bool or additive; None = no padding); T5's cross-attention has no position bias. Returns
    (R, Q, H, d_kv), None."""
    B, H, S, d = key.shape
    R, _, Q, _ = query.shape
    M = R // B
    q = query.view(B, M, H, Q, d).transpose(1, 2).reshape(B, H, M * Q, d)  # (B, H, M*Q, d)
    scores = torch.matmul(q, key.transpose(2, 3))  # (B, H, M*Q, S)
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    if attention_mask is not None:
        scores = scores + additive(attention_mask[::M, :, :1], scores.dtype)  # (B, 1, 1, S): padding only
    probs = fast_dropout(torch.softmax(scores.float(), dim=-1).to(value.dtype), dropout)  # (B, H, M*Q, S)
    out = torch.matmul(probs, value)  # (B, H, M*Q, d)
    return out.view(B, H, M, Q, d).permute(0, 2, 3, 1, 4).reshape(R, Q, H, d), None


ALL_ATTENTION_FUNCTIONS.register(FAST_ATTENTION, fast_dropout_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(FAST_ATTENTION, sdpa_mask)  # the masks HF builds for sdpa


def use_fast_dropout(t5):
    """Switch a ``T5ForConditionalGeneration`` to :func:`fast_dropout` (in place; same parameters, same p)."""
    for module in list(t5.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p).train(child.training))
    t5.set_attn_implementation(FAST_ATTENTION)
    return t5


def compile_t5(t5):
    """``torch.compile`` (inductor, dynamic shapes) of the model's ``forward`` and of its encoder's and decoder's
    (GFlowGR runs them apart), in place; the parameters and the state dict are unchanged."""
    for module in (t5, t5.get_encoder(), t5.get_decoder()):
        module.forward = torch.compile(module.forward, dynamic=True)
    return t5
