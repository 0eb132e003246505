"""Self-contained checkpoints of TIGER / LETTER models: everything needed to recommend, nothing of RecBole's.

``export_checkpoint(model, config, dataset, path)`` is called at the end of ``quick_start.run()`` for our models
(any fine-tuning method; the path is the result row's ``"export"``). The file holds plain dicts, lists, strings,
numbers and tensors only, so ``torch.load(path, weights_only=True)`` reads it without the training dataset or
RecBole's pickled ``Config``:

==================  ===============================================================================================
``format``          ``"recbole_gflowgr.export"``; ``version``: :data:`EXPORT_VERSION`
``model``           class name (TIGER | LETTER); ``finetune``, ``dataset``: how it was trained
``config``          the run's config as plain JSON-able values (``results.plain_config``)
``state_dict``      the backbone's weights (fine-tuning heads left out), incl. the ``item_tokens`` buffer
``item_tokens``     RecBole's internal id -> item token (index 0 = ``[PAD]``); ``item_titles`` aligned with it
``user_tokens``     RecBole's internal id -> user token, only when ``user_id_buckets`` > 0 (else None)
``semantic_ids``    ``codes`` (n_items, L) int64 per-level codes aligned with ``item_tokens`` (row 0 unused),
                    ``level_sizes`` (last = disambiguation range), ``folder`` (where they were computed)
``tokenizer``       ``name``, ``config`` (its config.json: text encoder, text fields, ...), ``text_fields`` (the
                    fields joined into an item's text, in order), ``title_field``, ``quantiser`` (the trained
                    RQ-VAE encoder + codebooks, ``{"in_dim", "state_dict"}``; None when the IDs' folder has no
                    ``rqvae.pth``: then new items cannot be added)
==================  ===============================================================================================

Read back with :func:`load_export` (``recommend.py`` builds the model from it).
"""
import json
import os

import torch

from recbole_gflowgr.foundation.errors import GFlowGRError
from recbole_gflowgr.foundation.utils import atomic_save

EXPORT_FORMAT = "recbole_gflowgr.export"
EXPORT_VERSION = 1
TITLE_FIELDS = ("title", "movie_title")  # the first of these in <dataset>.item names an item; else its first field


class CheckpointError(GFlowGRError):
    """A file given as an exported checkpoint is missing or is not one."""


def export_path(saved_model_file):
    """``saved/TIGER-<time>.pth`` -> ``saved/TIGER-<time>.export.pth``."""
    return os.path.splitext(saved_model_file)[0] + ".export.pth"


def _item_columns(data_path, dataset):
    """Field names of ``<data_path>/<dataset>.item`` (without ``item_id``), in file order; [] without that file."""
    path = os.path.join(data_path, f"{dataset}.item")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [c.split(":")[0] for c in f.readline().rstrip("\n").split("\t") if c.split(":")[0] != "item_id"]


def _titles(data_path, dataset, field, item_tokens):
    """Titles aligned with ``item_tokens`` ('' for [PAD] and items without one)."""
    from recbole_gflowgr.data.convert import read_item_text

    if field is None or not os.path.isfile(os.path.join(data_path, f"{dataset}.item")):
        return [""] * len(item_tokens)
    prefix = f"{field}: "
    text = {k: v[len(prefix):] for k, v in read_item_text(data_path, dataset, [field]).items()}
    return [text.get(t, "") for t in item_tokens]


def _tokenizer_part(folder, data_path, dataset):
    """The ``tokenizer`` entry: config.json and rqvae.pth of the semantic IDs' folder (when they exist)."""
    from recbole_gflowgr.tokenizer.semantic_ids import QUANTISER_FILE

    cfg, quantiser = None, None
    if folder and os.path.isfile(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
    if folder and os.path.isfile(os.path.join(folder, QUANTISER_FILE)):
        quantiser = torch.load(os.path.join(folder, QUANTISER_FILE), map_location="cpu", weights_only=True)
    columns = _item_columns(data_path, dataset)
    text_fields = list((cfg or {}).get("text_fields") or columns)  # None: every field (read_item_text's default)
    title = next((f for f in TITLE_FIELDS if f in columns), text_fields[0] if text_fields else None)
    return {"name": (cfg or {}).get("tokenizer"), "config": cfg, "text_fields": text_fields, "title_field": title,
            "quantiser": quantiser}


def make_export(model, config, item_tokens, item_titles, tokenizer, user_tokens=None, extra=None):
    """The checkpoint dict of ``model`` (a TIGER/LETTER) with plain ``config``; ``item_tokens``/``item_titles``
    aligned with RecBole's internal item ids."""
    from recbole_gflowgr.finetune import FINETUNE_HEADS
    from recbole_gflowgr.model.tiger import N_SPECIAL

    sizes = list(model.level_sizes)
    offsets = torch.tensor([N_SPECIAL + sum(sizes[:lv]) for lv in range(len(sizes))])
    codes = (model.item_tokens.cpu() - offsets).clamp(min=0)  # (n_items, L) per-level codes; row 0 (pad) -> 0
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(FINETUNE_HEADS)}
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": type(model).__name__,
            "finetune": config.get("finetune"), "dataset": config.get("dataset"), "config": config,
            "state_dict": state, "item_tokens": list(item_tokens), "item_titles": list(item_titles),
            "user_tokens": None if user_tokens is None else list(user_tokens),
            "semantic_ids": {"codes": codes, "level_sizes": sizes, "folder": getattr(model, "semantic_ids_path", None)},
            "tokenizer": tokenizer, **(extra or {})}


def export_checkpoint(model, config, dataset, path):
    """Write the self-contained checkpoint of a trained TIGER/LETTER ``model`` (RecBole ``config`` and ``dataset``
    of its run) to ``path``; returns ``path``."""
    from recbole_gflowgr.trainer.results import plain_config

    plain = plain_config(config)
    name, data_path = config["dataset"], config["data_path"]
    items = [str(t) for t in dataset.field2id_token[config["ITEM_ID_FIELD"]]]
    tokenizer = _tokenizer_part(getattr(model, "semantic_ids_path", None), data_path, name)
    users = None
    if int(config["user_id_buckets"] or 0) > 0:
        users = [str(t) for t in dataset.field2id_token[config["USER_ID_FIELD"]]]
    export = make_export(model, plain, items, _titles(data_path, name, tokenizer["title_field"], items), tokenizer,
                         users)
    return atomic_save(export, path)


def load_export(path, map_location="cpu"):
    """The checkpoint dict written by :func:`export_checkpoint`, loaded with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; give the file named by \"export\" in a result row "
                              "(saved/<model>-<time>.export.pth)")
    try:
        export = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a RecBole checkpoint (pickled Config) or not a torch file at all
        raise CheckpointError(f"checkpoint {path} is not an exported recbole_gflowgr checkpoint "
                              f"({type(e).__name__}); give the \"export\" file of a result row, not RecBole's "
                              "saved/<model>-<time>.pth") from None
    if not isinstance(export, dict) or export.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an exported recbole_gflowgr checkpoint (no format "
                              f"'{EXPORT_FORMAT}'); give the \"export\" file of a result row")
    if export.get("version") != EXPORT_VERSION:
        raise CheckpointError(f"checkpoint {path} has export version {export.get('version')}, this code reads "
                              f"version {EXPORT_VERSION}; export it again with this version of recbole_gflowgr")
    return export
