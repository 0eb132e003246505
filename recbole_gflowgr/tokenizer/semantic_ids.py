"""Semantic IDs of a dataset's items: config, computation, on-disk cache and statistics (RecBole-free).

``get_semantic_ids(dataset, tokenizer)`` returns a :class:`SemanticIDs`, computed on first use and read back after
from ``<data_path>/<dataset>/tokenizer/<tokenizer>-<config hash>/``: ``index.json`` (LETTER's ``*.index.json``
format, one letter per level, the disambiguation level included), ``stats.json``, ``config.json`` and ``rqvae.pth``
(the trained encoder + codebooks, which assign IDs to new items: ``recommend.py``; folders written before it existed
lack it). The hash covers
the tokenizer config (yaml + overrides), the seed and the item texts + encoder, so a changed text or setting gives a
new folder. Items whose codes coincide get an extra last token 0, 1, 2, ... (in ``<dataset>.item`` order) so that
item <-> ID is a bijection.
"""
import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
import yaml

from recbole_gflowgr.foundation.errors import ConfigError, DatasetError
from recbole_gflowgr.foundation.paths import REPO_PROPERTIES
from recbole_gflowgr.foundation.utils import atomic_folder, training_lock

TOKENIZERS = ("rqvae", "letter")
TOKENIZER_VERSION = 5  # part of the folder hash: bump when a change of the code changes the IDs
PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")
DATASET_PROPERTIES = os.path.join(REPO_PROPERTIES, "datasets")
# keys that change how a run is shown or where data comes from, not the IDs: left out of the folder's hash
VOLATILE_KEYS = {"embed_batch_size", "source_path", "source_prefix", "cpu_threads"}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
QUANTISER_FILE = "rqvae.pth"  # {"in_dim": D, "state_dict": RQ-VAE encoder.* and rq.* tensors}


@dataclass
class SemanticIDs:
    item_tokens: list  # item tokens of <dataset>.item, in file order
    codes: np.ndarray  # (n_items, L) int64 code per level, 0-based within the level; last column = disambiguation
    level_sizes: list  # values each column may take; last = largest group of items sharing the other columns
    path: str  # folder with index.json, stats.json, config.json
    stats: dict = field(default_factory=dict, repr=False)
    quantiser: dict = field(default=None, repr=False)  # trained encoder + codebooks, see QUANTISER_FILE

    def digest(self):
        """12 hex digits of a hash of the IDs themselves (item tokens and codes): what an SFT checkpoint depends on,
        whichever tokenizer config or code version made them."""
        blob = json.dumps([self.item_tokens, self.codes.tolist()]).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def index(self):
        """{item token: ["<a_12>", "<b_3>", ...]} (LETTER's index.json format)."""
        return {item: [f"<{LETTERS[lv]}_{c}>" for lv, c in enumerate(row)]
                for item, row in zip(self.item_tokens, self.codes.tolist())}


def _dataset_yaml(dataset):
    path = os.path.join(DATASET_PROPERTIES, f"{dataset}.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def load_tokenizer_config(tokenizer, dataset=None, overrides=None):
    """The tokenizer's yaml, the dataset's ``text_fields`` / LETTER alpha, then ``overrides`` (known keys only)."""
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"tokenizer: unknown value '{tokenizer}'; allowed values: {', '.join(TOKENIZERS)}")
    with open(os.path.join(PROPERTIES, "tokenizer", f"{tokenizer}.yaml")) as f:
        cfg = yaml.safe_load(f)
    if cfg.get("text_fields") is None and dataset:
        cfg["text_fields"] = _dataset_yaml(dataset).get("text_fields")
    allowed = set(cfg) | {"seed", "source_path", "source_prefix"}
    for key, value in (overrides or {}).items():
        if key not in allowed:
            raise ConfigError(f"{key}: not a {tokenizer} tokenizer key; known keys: {', '.join(sorted(allowed))}")
        cfg[key] = value
    from recbole_gflowgr.foundation.validation import tokenizer_schema, validate_keys

    validate_keys(cfg, tokenizer_schema(tokenizer), prefix="", given=set(overrides or {}))  # the yaml's own types
    if "alpha_by_dataset" in cfg:
        by_dataset = cfg.pop("alpha_by_dataset") or {}
        if "alpha" not in (overrides or {}) and dataset in by_dataset:
            cfg["alpha"] = by_dataset[dataset]
    if len(cfg["sk_epsilons"]) != len(cfg["num_emb_list"]):
        raise ConfigError(f"sk_epsilons: {len(cfg['sk_epsilons'])} values for {len(cfg['num_emb_list'])} codebook "
                          f"levels (num_emb_list); give one epsilon per level")
    levels = cfg.get("fill_dead_codes") or []
    if not isinstance(levels, list) or not all(isinstance(v, int) and 0 <= v < len(cfg["num_emb_list"]) for v in levels):
        raise ConfigError(f"fill_dead_codes: {levels!r} is not a list of codebook levels; give levels 0.."
                          f"{len(cfg['num_emb_list']) - 1} (0 = first), e.g. [0], or [] for none")
    if str(cfg["optimizer"]).lower() not in ("adagrad", "adam", "adamw", "sgd"):
        raise ConfigError(f"optimizer: unknown value '{cfg['optimizer']}'; allowed values: adagrad, adam, adamw, sgd")
    if cfg["loss_type"] not in ("mse", "l1"):
        raise ConfigError(f"loss_type: unknown value '{cfg['loss_type']}'; allowed values: mse, l1")
    if len(cfg["num_emb_list"]) + 1 > len(LETTERS):
        raise ConfigError(f"num_emb_list: at most {len(LETTERS) - 1} levels")
    return cfg


def config_hash(cfg, texts_key):
    stable = {k: v for k, v in sorted(cfg.items()) if k not in VOLATILE_KEYS}
    stable["texts_key"] = texts_key
    stable["version"] = TOKENIZER_VERSION
    return hashlib.sha1(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def disambiguate(codes):
    """(codes + a last column numbering items that share all other columns 0, 1, ... in row order, max group size)."""
    seen, extra = {}, np.zeros(len(codes), dtype=np.int64)
    for i, row in enumerate(map(tuple, codes.tolist())):
        extra[i] = seen.get(row, 0)
        seen[row] = extra[i] + 1
    return np.concatenate([codes, extra[:, None]], axis=1), int(max(seen.values(), default=1))


def code_stats(codes, level_sizes):
    """Collision rate, unique IDs and per-level usage (distinct codes / codebook size) and perplexity of ``codes``."""
    n = len(codes)
    unique = len(set(map(tuple, codes.tolist())))
    levels = []
    for lv, size in enumerate(level_sizes):
        counts = np.bincount(codes[:, lv], minlength=size)
        p = counts[counts > 0] / n
        levels.append({"used": int((counts > 0).sum()), "size": int(size),
                       "usage": round(float((counts > 0).sum() / size), 4),
                       "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 2)})
    return {"n_items": n, "unique_ids": unique, "collision_rate": round(1 - unique / n, 6), "levels": levels}


def parse_index_json(path):
    """(item tokens, codes (n, L) int64) of a LETTER ``*.index.json`` file ({"item": ["<a_1>", "<b_7>", ...]})."""
    with open(path) as f:
        index = json.load(f)
    items = list(index)
    try:
        codes = np.array([[int(tok.strip("<>").split("_")[1]) for tok in index[i]] for i in items], dtype=np.int64)
    except (ValueError, IndexError) as e:
        raise DatasetError(f"{path}: not LETTER's index format {{item: ['<a_1>', ...]}} ({e})") from None
    return items, codes


def _write_folder(folder, ids_index, stats, cfg, quantiser=None):
    with atomic_folder(folder) as tmp:
        for name, obj in (("index.json", ids_index), ("stats.json", stats), ("config.json", cfg)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(obj, f, indent=None if name == "index.json" else 1)
        if quantiser is not None:
            import torch

            torch.save(quantiser, os.path.join(tmp, QUANTISER_FILE))


def read_semantic_ids(folder):
    """The :class:`SemanticIDs` saved in ``folder``."""
    items, codes = parse_index_json(os.path.join(folder, "index.json"))
    with open(os.path.join(folder, "stats.json")) as f:
        stats = json.load(f)
    return SemanticIDs(items, codes, list(stats["level_sizes"]), folder, stats)


def _collaborative(dataset, cfg, data_path, device, item_tokens, cf_embeddings, logger):
    """(n, d) collaborative embeddings aligned with ``item_tokens``. ``cf_embeddings``: (item tokens, (n, d) array)
    or a function ``(dataset, data_root=, device=)`` returning them (the runtime's
    ``quick_start.sasrec_item_embeddings``), called with the tokenizer's own dataset source."""
    if cf_embeddings is None:
        raise ConfigError(f"the letter tokenizer of dataset '{dataset}' needs the collaborative model's item "
                          "embeddings: pass cf_embeddings (e.g. recbole_gflowgr.quick_start.sasrec_item_embeddings)")
    if callable(cf_embeddings):
        from recbole_gflowgr.data import dataset_settings

        logger.info(f"LETTER: collaborative (SASRec) item embeddings of {dataset}")
        cf_embeddings = cf_embeddings(dataset, data_root=dataset_settings(cfg, data_path), device=device)
    tokens, emb = cf_embeddings
    row = {str(t): i for i, t in enumerate(tokens)}
    missing = [t for t in item_tokens if t not in row]
    if missing:
        raise DatasetError(f"dataset '{dataset}': {len(missing)} items (e.g. '{missing[0]}') have no collaborative "
                           f"embedding; the SASRec model was trained on other data - delete its cached checkpoint")
    return np.asarray(emb, dtype=np.float32)[[row[t] for t in item_tokens]]


@contextlib.contextmanager
def _cpu_threads(n, device):
    """torch uses ``n`` CPU threads inside (0 or a non-CPU device: unchanged), the caller's setting after."""
    import torch

    old = torch.get_num_threads()
    if n and torch.device(device).type == "cpu":
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def compute_semantic_ids(dataset, tokenizer, cfg, data_path="dataset", device="cpu", logger=None,
                         cf_embeddings=None, show_progress=True):
    """Train the tokenizer and return (SemanticIDs without path, stats dict)."""
    from recbole_gflowgr.tokenizer.embeddings import (cache_path, cached_encode_seconds, encoder_id,
                                                      item_text_embeddings, load_item_texts, texts_key)

    logger = logger or getLogger()
    seed = cfg.get("seed", 42)
    start, load_start = time.time(), os.getloadavg()[0]
    item_text = load_item_texts(data_path, dataset, cfg["text_fields"])
    key = texts_key(item_text, encoder_id(cfg["text_encoder"]))
    emb_path = cache_path(data_path, dataset, key)
    cached = os.path.isfile(emb_path)
    items, emb = item_text_embeddings(data_path, dataset, cfg["text_fields"], cfg["text_encoder"],
                                      cfg["embed_batch_size"], device, show_progress, logger)
    embed_s = time.time() - start
    encode_s = cached_encode_seconds(emb_path)  # what computing the embeddings took (now or when cached)
    item_keys = np.unique([item_text[i] for i in items], return_inverse=True)[1]  # (n,) same text, same key
    t0 = time.time()
    extra = {}
    if tokenizer == "letter":
        cf = _collaborative(dataset, cfg, data_path, device, items, cf_embeddings, logger)
        extra = {"cf_dim": int(cf.shape[1]), "cf_s": round(time.time() - t0, 1)}
        t0 = time.time()
    with _cpu_threads(cfg.get("cpu_threads", 0), device) as threads:
        if tokenizer == "rqvae":
            from recbole_gflowgr.tokenizer.rqvae import train_rqvae

            codes, trainer = train_rqvae(emb, cfg, seed, device, logger, item_keys)
        else:
            from recbole_gflowgr.tokenizer.letter import train_letter

            codes, raw, trainer = train_letter(emb, cf, cfg, seed, device, logger, item_keys)
            extra["collision_rate_nearest_code"] = code_stats(raw, cfg["num_emb_list"])["collision_rate"]
    train_s = time.time() - t0
    before = code_stats(codes, cfg["num_emb_list"])
    full, max_group = disambiguate(codes)
    level_sizes = list(cfg["num_emb_list"]) + [max_group]
    after = code_stats(full, level_sizes)
    assert after["unique_ids"] == len(items), "disambiguation must give every item its own ID"
    state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items() if not k.startswith("decoder.")}
    quantiser = {"in_dim": int(emb.shape[1]), "state_dict": state}
    stats = {"dataset": dataset, "tokenizer": tokenizer, "n_items": len(items), "level_sizes": level_sizes,
             "collision_rate": before["collision_rate"], "unique_ids_before": before["unique_ids"],
             "unique_ids": after["unique_ids"], "max_collision_group": max_group, **extra,
             "dead_codes_filled": trainer.filled,
             "levels": after["levels"], "seed": seed, "device": str(device), "epochs": cfg["epochs"],
             "best_epoch": trainer.best and trainer.best["epoch"],
             "batch_size": cfg["batch_size"], "embed_s": round(embed_s, 1), "train_s": round(train_s, 1),
             "wall_s": round(time.time() - start, 1), "embeddings_cached": cached,
             "encode_s": None if encode_s is None else round(encode_s, 1),
             "load_avg": [round(load_start, 1), round(os.getloadavg()[0], 1)], "cpu_count": os.cpu_count(),
             "threads": threads,
             "note": f"epochs={cfg['epochs']} (papers: 20000 on GPU) to fit the CPU time budget",
             "history": trainer.history}
    logger.info(f"{tokenizer} IDs of {dataset}: collision rate {before['collision_rate']:.4%} before "
                f"disambiguation, max group {max_group}, wall {stats['wall_s']} s")
    return SemanticIDs(items, full, level_sizes, "", stats, quantiser), stats


def get_semantic_ids(dataset, tokenizer, data_path="dataset", overrides=None, device="cpu", logger=None,
                     cf_embeddings=None, show_progress=True):
    """The item semantic IDs of ``dataset`` by ``tokenizer`` ('rqvae' or 'letter'), computed once and cached.

    ``overrides``: tokenizer keys (see properties/tokenizer/<tokenizer>.yaml) plus ``seed`` (default 42),
    ``source_path`` and ``source_prefix`` (where the dataset's source files are). ``cf_embeddings`` (LETTER only):
    (item tokens, (n, d) array) or a function returning them, called only when the IDs are not cached
    (``recbole_gflowgr.quick_start.sasrec_item_embeddings`` trains or loads the collaborative SASRec).
    """
    from recbole_gflowgr.data import prepare_dataset
    from recbole_gflowgr.tokenizer.embeddings import encoder_id, load_item_texts, texts_key

    logger = logger or getLogger()
    cfg = load_tokenizer_config(tokenizer, dataset, overrides)
    cfg.setdefault("seed", 42)
    out_dir = os.path.join(data_path, dataset)
    prepare_dataset(dataset, out_dir, cfg.get("source_path"), cfg.get("source_prefix"), logger=logger)
    if not cfg["text_fields"]:  # an unregistered dataset without text_fields: the item file's text-like fields
        from recbole_gflowgr.data.convert import default_text_fields

        cfg["text_fields"] = default_text_fields(out_dir, dataset)
    item_text = load_item_texts(data_path, dataset, cfg["text_fields"])
    key = texts_key(item_text, encoder_id(cfg["text_encoder"]))
    folder = os.path.join(out_dir, "tokenizer", f"{tokenizer}-{config_hash(cfg, key)}")

    def cached():
        if os.path.isfile(os.path.join(folder, "stats.json")) and os.path.isfile(os.path.join(folder, "index.json")):
            ids = read_semantic_ids(folder)
            if ids.item_tokens == list(item_text):
                logger.info(f"{tokenizer} semantic IDs of {dataset} from {folder}")
                return ids
        return None

    ids = cached()
    if ids is not None:
        return ids
    with training_lock(folder):  # concurrent runs of one dataset (grid jobs, runners) wait for one computation
        ids = cached()
        if ids is not None:
            return ids
        ids, stats = compute_semantic_ids(dataset, tokenizer, cfg, data_path, device, logger, cf_embeddings,
                                          show_progress)
        saved_cfg = dict(cfg, dataset=dataset, tokenizer=tokenizer, texts_key=key, version=TOKENIZER_VERSION)
        _write_folder(folder, ids.index(), stats, saved_cfg, ids.quantiser)
    ids.path = folder
    logger.info(f"{tokenizer} semantic IDs of {dataset} written to {folder}")
    return ids
