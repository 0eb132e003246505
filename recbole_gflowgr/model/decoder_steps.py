"""One decoder step of trie-constrained decoding (``beam_search.py``): decoder states (R, d) of the beam rows'
prefixes, step after step, with the beams reordered between steps.

:class:`GroupedT5Stepper` (the default) reuses T5's sub-modules with a self-attention KV cache and one copy of the
cross-attention keys/values per user (not per beam); :class:`HFCacheStepper` (HF ``EncoderDecoderCache``) and
:class:`RecomputeStepper` (no cache) are reference paths built on the HF decoder forward and give the same states.
"""
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


def cross_keys_values(decoder, enc):
    """[(k, v)] per decoder layer: the cross-attention keys/values (B, H, S, d_kv) of encoder states (B, S, d),
    projected once per user."""
    B, S, _ = enc.shape
    out = []
    for block in decoder.block:
        att = block.layer[1].EncDecAttention
        k = att.k(enc).view(B, S, att.n_heads, att.key_value_proj_dim).transpose(1, 2)  # (B, H, S, dk)
        v = att.v(enc).view(B, S, att.n_heads, att.key_value_proj_dim).transpose(1, 2)  # (B, H, S, dk)
        out.append((k, v))
    return out


class RecomputeStepper:
    """Reference decoder: re-runs the HF decoder on the whole prefix every step (no cache)."""

    def __init__(self, model, enc, mask):
        self.decoder, self.enc, self.mask = model.get_decoder(), enc, mask  # (B, S, d), (B, S)

    def expand(self, K):
        self.enc = self.enc.repeat_interleave(K, dim=0)  # (B*K, S, d)
        self.mask = self.mask.repeat_interleave(K, dim=0) if self.mask is not None else None

    def reorder(self, rows):
        pass

    def step(self, seq, rows=None):  # seq (R, t + 1) -> (R, d); rows: only those rows' states (a final step)
        h = self.decoder(input_ids=seq, encoder_hidden_states=self.enc, encoder_attention_mask=self.mask,
                         use_cache=False).last_hidden_state[:, -1]
        return h if rows is None else h[rows]


class HFCacheStepper(RecomputeStepper):
    """HF decoder with an ``EncoderDecoderCache``; beams reorder only the self-attention cache (index_select)."""

    def __init__(self, model, enc, mask):
        super().__init__(model, enc, mask)
        config = self.decoder.config
        self.cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))

    def expand(self, K):
        super().expand(K)
        self.cache.batch_repeat_interleave(K)  # cross-attention K/V copied for every beam, as HF generate does

    def reorder(self, rows):
        self.cache.self_attention_cache.reorder_cache(rows)

    def step(self, seq, rows=None):
        h = self.decoder(input_ids=seq[:, -1:], encoder_hidden_states=self.enc, encoder_attention_mask=self.mask,
                         cache=self.cache, use_cache=True).last_hidden_state[:, -1]
        return h if rows is None else h[rows]


class GroupedT5Stepper:
    """Incremental T5 decoder step with cross-attention grouped by user (reuses the model's own sub-modules).

    The cross-attention keys/values are computed once per user, (B, H, S, d_kv), and the K beams of a user are
    attended as K queries against them: (B, H, K, d_kv) @ (B, H, d_kv, S).  This avoids copying them for every
    beam (what HF generate does), which dominates decoding time and memory.  The self-attention cache holds
    (R, H, t, d_kv) per layer.  Mirrors ``T5Stack`` in eval mode: no dropout, no fp16 clamping.
    """

    def __init__(self, model, enc, mask):
        dec = model.get_decoder()
        self.dec, self.blocks, self.t = dec, dec.block, 0
        att0 = dec.block[0].layer[0].SelfAttention
        self.H, self.dk = att0.n_heads, att0.key_value_proj_dim
        B, S, _ = enc.shape
        self.bias = None  # relative position bias rows, filled lazily
        self.cross = cross_keys_values(dec, enc)  # per layer (B, H, S, dk) twice
        mask = torch.ones(B, S, dtype=torch.bool, device=enc.device) if mask is None else mask.bool()
        self.keep = mask.view(B, 1, 1, S)  # (B, 1, 1, S)
        self.kv = [None] * len(self.blocks)

    def expand(self, K):
        self.kv = [(k.repeat_interleave(K, dim=0), v.repeat_interleave(K, dim=0)) for k, v in self.kv]

    def reorder(self, rows):
        self.kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.kv]

    def _attend(self, q, k, v, add=None, keep=None):
        s = q @ k.transpose(-1, -2)  # T5: no 1/sqrt(d) scaling
        if add is not None:
            s = s + add
        if keep is not None:
            s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
        return torch.softmax(s.float(), dim=-1).type_as(q) @ v

    def step(self, seq, rows=None):  # seq (R, t + 1) -> (R, d), or (r, d) for the r = len(rows) rows asked for
        """One decoder step for every row, or (``rows``, a final step) for some rows only: then their cache
        entries are not kept and each row attends its own user's cross keys/values, gathered (r, H, S, dk)."""
        R, t, B = seq.shape[0], self.t, self.keep.shape[0]
        G, H, dk = R // B, self.H, self.dk
        if self.bias is None or self.bias.shape[-1] <= t:
            att0 = self.blocks[0].layer[0].SelfAttention
            self.bias = att0.compute_bias(t + 8, t + 8, device=seq.device)  # (1, H, n, n)
        bias = self.bias[:, :, t:t + 1, :t + 1]  # (1, H, 1, t + 1)
        if rows is not None:
            seq, users = seq[rows], rows // G  # (r, t + 1), (r,)
        r = seq.shape[0]
        h = self.dec.embed_tokens(seq[:, -1])  # (r, d)
        for i, blk in enumerate(self.blocks):
            sa, ca = blk.layer[0], blk.layer[1]
            n = sa.layer_norm(h)
            att = sa.SelfAttention
            q, k, v = (p(n).view(r, H, 1, dk) for p in (att.q, att.k, att.v))  # (r, H, 1, dk)
            if self.kv[i] is not None:
                past_k, past_v = self.kv[i] if rows is None else (self.kv[i][0][rows], self.kv[i][1][rows])
                k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
            if rows is None:
                self.kv[i] = (k, v)  # (R, H, t + 1, dk)
            h = h + att.o(self._attend(q, k, v, add=bias).reshape(r, H * dk))
            n = ca.layer_norm(h)
            att = ca.EncDecAttention
            if rows is None:
                q = att.q(n).view(B, G, H, dk).transpose(1, 2)  # (B, H, G, dk)
                out = self._attend(q, *self.cross[i], keep=self.keep)  # (B, H, G, dk)
            else:
                q = att.q(n).view(r, H, 1, dk)  # (r, H, 1, dk)
                ck, cv = (c[users] for c in self.cross[i])  # (r, H, S, dk)
                out = self._attend(q, ck, cv, keep=self.keep[users])  # (r, H, 1, dk)
            h = h + att.o(out.transpose(1, 2).reshape(r, H * dk))
            h = blk.layer[2](h)  # feed-forward with residual
        if rows is None:
            self.t += 1
        return self.dec.final_layer_norm(h)


STEPPERS = {"grouped": GroupedT5Stepper, "cache": HFCacheStepper, "recompute": RecomputeStepper}
