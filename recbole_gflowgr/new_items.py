"""Semantic IDs for items the model never saw (TIGER's cold-start property), from their text.

An item's text is built exactly as for training (``text_fields`` joined as ``field: value; ...``,
``data/convert.py``), embedded with the same encoder (``tokenizer/embeddings.py``) and quantised by the trained
RQ-VAE encoder + codebooks kept in the exported checkpoint: the nearest code at every level. LETTER's Sinkhorn
re-assignment of colliding items is a whole-catalog step and is not applied to new items.

Limits: an item whose codes equal those of existing items (or of other new items) gets the next disambiguation
token (0, 1, 2, ... as in training); the backbone's vocabulary has ``level_sizes[-1]`` such tokens (the largest
collision group of the training catalog), so a new item needing more is refused with :class:`NewItemError`.
"""
import numpy as np
import torch

from recbole_gflowgr.foundation.errors import GFlowGRError


class NewItemError(GFlowGRError):
    """New items cannot be given a semantic ID (bad input, no trained tokenizer, or no disambiguation token left)."""


def item_text(token, fields, text_fields):
    """The text of a new item as training built it: '<field>: <value>; ...' over ``text_fields``, empty skipped."""
    from recbole_gflowgr.data.convert import _text, join_text

    if not isinstance(fields, dict):
        raise NewItemError(f"new item '{token}': give its text as {{field: text}} (fields {', '.join(text_fields)}), "
                           f"not {type(fields).__name__}")
    text = join_text((f, _text(fields.get(f))) for f in text_fields)  # _text(None) == ""
    if not text:
        raise NewItemError(f"new item '{token}' has no text in the fields the tokenizer embeds "
                           f"({', '.join(text_fields)}); give at least one of them")
    return text


def load_quantiser(quantiser, cfg):
    """(encoder MLP, ResidualQuantizer) in eval mode from the checkpoint's ``tokenizer.quantiser`` and config."""
    from recbole_gflowgr.tokenizer.rqvae import MLP, ResidualQuantizer

    encoder = MLP([quantiser["in_dim"]] + list(cfg["layers"]) + [cfg["e_dim"]])
    rq = ResidualQuantizer(cfg["num_emb_list"], cfg["e_dim"])
    state = quantiser["state_dict"]
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    rq.load_state_dict({k[len("rq."):]: v for k, v in state.items() if k.startswith("rq.")})
    return encoder.eval(), rq.eval()


@torch.no_grad()
def quantise(emb, quantiser, cfg):
    """(n, L - 1) int64 nearest codes of text embeddings ``emb`` (n, D), without the disambiguation level."""
    encoder, rq = load_quantiser(quantiser, cfg)
    x = torch.as_tensor(np.asarray(emb, dtype=np.float32))
    if x.shape[1] != quantiser["in_dim"]:
        raise NewItemError(f"text embeddings of size {x.shape[1]}, the tokenizer was trained on size "
                           f"{quantiser['in_dim']}; use the checkpoint's text encoder ({cfg.get('text_encoder')})")
    return rq(encoder(x))[1].numpy().astype(np.int64)  # (n, L - 1)


def disambiguate_new(codes, existing, level_sizes, tokens):
    """Full codes (n, L) for new items' ``codes`` (n, L - 1): the last column is the next free disambiguation index
    after the ``existing`` (m, L) codes sharing their prefix (and earlier new items); beyond the trained range
    ``level_sizes[-1]`` a :class:`NewItemError` names the items."""
    used = {}
    for row in existing.tolist():
        key = tuple(row[:-1])
        used[key] = max(used.get(key, -1), row[-1])
    out, refused = np.zeros((len(codes), codes.shape[1] + 1), dtype=np.int64), []
    for i, row in enumerate(codes.tolist()):
        nxt = used.get(tuple(row), -1) + 1
        if nxt >= level_sizes[-1]:
            refused.append(f"'{tokens[i]}' (codes {row}, disambiguation index {nxt})")
        used[tuple(row)] = nxt
        out[i] = row + [nxt]
    if refused:
        raise NewItemError(f"{len(refused)} new item(s) share their semantic ID with existing items and need a "
                           f"disambiguation token the model was not trained with (it has {level_sizes[-1]}: "
                           f"0..{level_sizes[-1] - 1}): {', '.join(refused[:5])}; such items need retraining")
    return out


def assign_ids(items, tokenizer, existing, level_sizes, text_encoder=None, batch_size=128, device="cpu"):
    """Full codes (n, L) for ``items`` {token: {field: text}} with the checkpoint's ``tokenizer`` entry."""
    from recbole_gflowgr.tokenizer.embeddings import encode_texts, resolve_encoder

    cfg, quantiser = tokenizer.get("config"), tokenizer.get("quantiser")
    if quantiser is None or cfg is None:
        raise NewItemError("this checkpoint has no trained tokenizer weights (its semantic IDs were computed before "
                           "rqvae.pth was kept, or were not computed by a tokenizer); rebuild them (delete the "
                           "dataset's tokenizer/<tokenizer>-<hash>/ folder), retrain and export again")
    tokens = list(items)
    texts = [item_text(t, items[t], tokenizer["text_fields"]) for t in tokens]
    emb = encode_texts(texts, resolve_encoder(text_encoder or cfg["text_encoder"]), batch_size, device,
                       show_progress=False)  # (n, D)
    return disambiguate_new(quantise(emb, quantiser, cfg), existing, level_sizes, tokens)
