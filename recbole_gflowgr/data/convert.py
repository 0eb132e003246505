"""Source data → RecBole atomic files (``dataset/<name>/<name>.inter`` and ``.item``), atomically.

``<name>.inter``: ``user_id:token  item_id:token  timestamp:float`` where timestamp = the position of the item in
the user's time-ordered sequence (0, 1, ...). Positions are exact in RecBole's float32 FLOAT fields (Unix
timestamps are not) and, with RecBole's stable sort, keep each user's order.
``<name>.item``: ``item_id:token`` and every text field of the source (``:token_seq`` if it has spaces).
A ``manifest.json`` records the sources (size, mtime) and counts; conversion is skipped while it matches.
"""
import collections
import hashlib
import json
import os
from logging import getLogger

import pandas as pd

from recbole_gflowgr.data.registry import require_dataset_spec
from recbole_gflowgr.foundation.errors import DatasetError
from recbole_gflowgr.foundation.utils import atomic_folder

CONVERTER_VERSION = 1
MIN_USER_ITEMS = 3  # leave-one-out needs one train, one valid and one test item per user


def _read_json(path, what, dataset):
    if not os.path.isfile(path):
        raise DatasetError(
            f"dataset '{dataset}': {what} file {path} not found; set --source_path=<folder that contains it> "
            f"(or source_path in a config file)"
        )

    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise DatasetError(f"dataset '{dataset}': {path} has the id '{key}' twice; make ids unique")
            seen[key] = value
        return seen

    if os.path.getsize(path) == 0:
        raise DatasetError(f"dataset '{dataset}': {what} file {path} is empty; re-export it (LETTER json format, "
                           f"see README 'Datasets')")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=no_duplicates)
    except UnicodeDecodeError as e:
        raise DatasetError(f"dataset '{dataset}': {path} is not UTF-8 ({e.reason} at byte {e.start}); "
                           f"re-encode it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"dataset '{dataset}': {path} is not valid JSON ({e.msg} at line {e.lineno} "
                           f"column {e.colno}); fix or re-export the file") from None


def letter_sequences(dataset, source_path=None):
    """{user: [item, ...]} (str ids, time order) of a LETTER-format dataset's ``<Prefix>.inter.json``, read as the
    converter reads it (its errors); None for a dataset in another format or without that file."""
    spec = require_dataset_spec(dataset, source_path)
    path = os.path.join(spec.default_source, f"{spec.prefix}.inter.json")
    if spec.source_format != "letter" or not os.path.isfile(path):
        return None
    return {str(u): [str(i) for i in seq] for u, seq in _read_json(path, "interaction", spec.name).items()}


def _text(value):
    if value is None:  # JSON null: no text (an item needs some text in one of its fields, see tokenizer/)
        return ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(_text(v) for v in value)
    return " ".join(str(value).split())  # tabs/newlines would break the atomic file


def _load_letter(spec):
    inter_path = os.path.join(spec.default_source, f"{spec.prefix}.inter.json")
    item_path = os.path.join(spec.default_source, f"{spec.prefix}.item.json")
    inter = _read_json(inter_path, "interaction", spec.name)
    items = _read_json(item_path, "item", spec.name)
    if not isinstance(inter, dict) or not inter:
        raise DatasetError(f"dataset '{spec.name}': {inter_path} must be a non-empty object "
                           "{user_id: [item_id, ...]}")
    if not isinstance(items, dict) or not items or not all(isinstance(v, dict) for v in items.values()):
        raise DatasetError(f"dataset '{spec.name}': {item_path} must be a non-empty object {{item_id: {{field: text}}}}")
    sequences = {}
    for user, seq in inter.items():
        if not isinstance(seq, list) or not all(isinstance(i, (int, str)) for i in seq):
            raise DatasetError(f"dataset '{spec.name}': user '{user}' in {inter_path} must map to a list of item ids")
        seq = [str(i) for i in seq]
        if len(seq) < MIN_USER_ITEMS:
            raise DatasetError(f"dataset '{spec.name}': user '{user}' in {inter_path} has {len(seq)} items, fewer "
                               f"than {MIN_USER_ITEMS} (train + valid + test); drop such users before converting")
        for item in seq:
            if item not in items:
                raise DatasetError(f"dataset '{spec.name}': item '{item}' of user '{user}' in {inter_path} has no "
                                   f"entry in {item_path}; add it there or remove it from the interactions")
        sequences[str(user)] = seq
    fields = collections.OrderedDict()
    for attrs in items.values():
        for name, value in attrs.items():
            if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                fields.setdefault(name, None)
    table = {name: {item: _text(attrs.get(name, "")) for item, attrs in items.items()} for name in fields}
    return sequences, table, [inter_path, item_path]


def _load_recbole_ml(spec):
    inter_path = os.path.join(spec.default_source, f"{spec.prefix}.inter")
    item_path = os.path.join(spec.default_source, f"{spec.prefix}.item")
    for path in (inter_path, item_path):
        if not os.path.isfile(path):
            raise DatasetError(f"dataset '{spec.name}': {path} not found; reinstall recbole==1.2.1 or set "
                               f"--source_path=<folder with {spec.prefix}.inter and {spec.prefix}.item>")
    inter = pd.read_csv(inter_path, sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter["_t"] = inter["timestamp"].astype("int64")
    inter = inter.sort_values(["user_id", "_t"], kind="stable")  # file order breaks ties
    sequences = {u: list(g["item_id"]) for u, g in inter.groupby("user_id", sort=False)}
    items = pd.read_csv(item_path, sep="\t", dtype=str, keep_default_na=False)
    items.columns = [c.split(":")[0] for c in items.columns]
    table = {f: {i: _text(t) for i, t in zip(items["item_id"], items[f])} for f in items.columns if f != "item_id"}
    return sequences, table, [inter_path, item_path]


def _sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sources_signature(paths):
    """Content, not mtime: a re-provisioned copy of the same data (new mtime) must not trigger a re-conversion."""
    return [{"path": os.path.abspath(p), "size": os.path.getsize(p), "sha1": _sha1(p)} for p in paths]


def _carry_caches(old_dir, new_dir, name):
    """Move the caches kept beside the atomic files (``tokenizer/``: text embeddings, semantic IDs) from the old
    folder into the new one when the conversion produced byte-identical atomic files; otherwise they are stale and
    go with the old folder."""
    files = [f"{name}.inter", f"{name}.item"]
    if not all(os.path.isfile(os.path.join(old_dir, f)) for f in files):
        return
    if any(_sha1(os.path.join(old_dir, f)) != _sha1(os.path.join(new_dir, f)) for f in files):
        return
    for entry in os.listdir(old_dir):
        if not os.path.exists(os.path.join(new_dir, entry)):
            os.replace(os.path.join(old_dir, entry), os.path.join(new_dir, entry))


def _write(out_dir, name, sequences, table, manifest):
    with atomic_folder(out_dir) as tmp:
        with open(os.path.join(tmp, f"{name}.inter"), "w", encoding="utf-8") as f:
            f.write("user_id:token\titem_id:token\ttimestamp:float\n")
            for user, seq in sequences.items():
                f.writelines(f"{user}\t{item}\t{pos}\n" for pos, item in enumerate(seq))
        used = {i for seq in sequences.values() for i in seq}
        item_ids = [i for i in next(iter(table.values()), {}) if i in used] if table else sorted(used)
        types = {f: "token_seq" if any(" " in v for v in col.values()) else "token" for f, col in table.items()}
        with open(os.path.join(tmp, f"{name}.item"), "w", encoding="utf-8") as f:
            f.write("\t".join(["item_id:token"] + [f"{k}:{t}" for k, t in types.items()]) + "\n")
            for item in item_ids:
                f.write("\t".join([item] + [table[k].get(item, "") for k in types]) + "\n")
        manifest = dict(manifest, n_users=len(sequences), n_items=len(used),
                        n_interactions=sum(len(s) for s in sequences.values()), item_fields=list(types))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        _carry_caches(out_dir, tmp, name)
    return manifest


def read_manifest(out_dir):
    path = os.path.join(out_dir, "manifest.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def prepare_dataset(name, out_dir, source_path=None, source_prefix=None, logger=None):
    """Make sure ``out_dir`` holds current atomic files for dataset ``name``; returns the manifest."""
    spec = require_dataset_spec(name, source_path, source_prefix)
    if spec.source_format == "letter":
        paths = [os.path.join(spec.default_source, f"{spec.prefix}.{k}.json") for k in ("inter", "item")]
    else:
        paths = [os.path.join(spec.default_source, f"{spec.prefix}.{k}") for k in ("inter", "item")]
    old = read_manifest(out_dir)
    if old and all(os.path.isfile(p) for p in paths) and old.get("version") == CONVERTER_VERSION \
            and old.get("sources") == _sources_signature(paths):
        return old
    have_atomic = os.path.isfile(os.path.join(out_dir, f"{name}.inter"))
    if old is None and have_atomic and not os.path.isdir(spec.default_source):
        return {"name": name}  # user-provided atomic files, no source
    if old and old.get("version") == CONVERTER_VERSION and have_atomic and not any(map(os.path.isfile, paths)):
        return old  # converted before, sources not here (a copy of dataset/ carried to another machine): use it
    loader = _load_letter if spec.source_format == "letter" else _load_recbole_ml
    sequences, table, paths = loader(spec)
    manifest = {"name": name, "version": CONVERTER_VERSION, "sources": _sources_signature(paths)}
    manifest = _write(out_dir, name, sequences, table, manifest)
    if logger is not None:
        logger.info(f"converted {name}: {manifest['n_users']} users, {manifest['n_items']} items, "
                    f"{manifest['n_interactions']} interactions -> {out_dir}")
    return manifest


ID_NAMES = {"asin", "parent_asin", "id", "item", "business_id", "sku", "isbn", "upc", "url", "image", "imurl"}
_WARNED = set()


def text_like_fields(items):
    """The fields of an item table (a DataFrame of strings) that hold text: not the item id, not id-like (a name such as
    ``asin`` / ``*_id``, or one word per item that (nearly) every item has its own of), not numbers only."""
    chosen = []
    for col in items.columns:
        if col == "item_id" or col.lower() in ID_NAMES or col.lower().endswith(("_id", "_url")):
            continue
        values = items[col][items[col].str.strip() != ""]
        if values.empty or pd.to_numeric(values, errors="coerce").notna().all():
            continue
        one_word = ~values.str.contains(r"\s")
        if one_word.all() and values.nunique() >= 0.9 * len(values) and len(values) > 1:
            continue  # a code per item (B00004U9V2, ...), not text
        chosen.append(col)
    return chosen


def _read_items(out_dir, name):
    path = os.path.join(out_dir, f"{name}.item")
    items = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    items.columns = [c.split(":")[0] for c in items.columns]
    return path, items


def default_text_fields(out_dir, name, items=None):
    """``text_fields`` of a dataset that sets none: the text-like fields of ``<name>.item``, logged once as a warning."""
    path, items = _read_items(out_dir, name) if items is None else (os.path.join(out_dir, f"{name}.item"), items)
    fields = text_like_fields(items)
    if path not in _WARNED:
        _WARNED.add(path)
        skipped = [c for c in items.columns if c != "item_id" and c not in fields]
        getLogger().warning(f"dataset '{name}': text_fields not set; the item text is built from {fields} (not text: "
                            f"{skipped}); set --text_fields=[...] (or text_fields in a config file) to choose")
    return fields


def read_item_text(out_dir, name, text_fields=None):
    """{item token: text} from ``<name>.item``: the ``text_fields`` joined as '<field>: <value>; ...', empty values
    skipped. Without ``text_fields``: the file's text-like fields (:func:`text_like_fields`), with a warning."""
    path, items = _read_items(out_dir, name)
    text_fields = list(text_fields or default_text_fields(out_dir, name, items))
    missing = [f for f in text_fields if f not in items.columns]
    if missing or not text_fields:
        raise DatasetError(f"dataset '{name}': {path} lacks the text field(s) {missing or text_fields}; set "
                           f"text_fields in the dataset yaml to columns of that file")
    return {row[0]: join_text(zip(text_fields, row[1:]))
            for row in items[["item_id"] + text_fields].itertuples(index=False)}


def join_text(field_values):
    """An item's text for the tokenizers: '<field>: <value>; ...' over (field, value) pairs, empty values skipped."""
    return "; ".join(f"{f}: {v}" for f, v in field_values if v.strip())
