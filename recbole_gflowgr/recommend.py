"""Recommend with a trained TIGER / LETTER model from its exported checkpoint (``export.py``), without the dataset.

    from recbole_gflowgr.recommend import Recommender
    rec = Recommender.from_checkpoint("saved/TIGER-<time>.export.pth")
    rec.recommend(["B004756YJA", "B004ZT0SSG"], k=10)  # [(item token, title, score), ...], best first
    rec.recommend_many([[...], [...]], k=10)            # one list per history
    rec.add_items({"NEW1": {"title": "...", "categories": "..."}})  # recommendable from now on

    python -m recbole_gflowgr.recommend --checkpoint=saved/TIGER-<time>.export.pth --history "B004756YJA B004ZT0SSG"
    python -m recbole_gflowgr.recommend --checkpoint=... --input histories.jsonl --output recs.jsonl [--k=10]

A history is a list of item tokens, oldest first; only its last ``MAX_ITEM_LIST_LENGTH`` items are read (as in
training). Scores are the constrained beam search's sequence log-probabilities (``model/beam_search.py``), from a
beam of ``max(k, beam_size)``. Items of the history are not excluded (RecBole's sequential evaluation does not
exclude them either).
"""
import argparse
import json
import os
import sys
import warnings

import torch

from recbole_gflowgr.foundation.errors import GFlowGRError, cli


class UnknownItemError(GFlowGRError):
    """A history names items the model's catalog does not have."""


class _Catalog:
    """Stands in for RecBole's dataset when the model is rebuilt: item count and the semantic IDs."""

    def __init__(self, item_field, n_items, codes, level_sizes):
        self.item_field, self.n_items = item_field, n_items
        self.semantic_codes, self.level_sizes = codes, level_sizes  # (n_items, L) numpy, [sizes]

    def num(self, field):
        assert field == self.item_field, field
        return self.n_items


def build_model(export, device="cpu"):
    """The TIGER/LETTER nn.Module of an export dict (weights loaded, eval mode) on ``device``; an export without
    ``state_dict`` gives randomly initialised weights (benchmarks)."""
    from recbole_gflowgr.foundation.errors import ConfigError
    from recbole_gflowgr.model import OUR_MODELS, get_model

    if export["model"] not in OUR_MODELS:
        raise ConfigError(f"checkpoint model '{export['model']}': only {', '.join(OUR_MODELS)} can be rebuilt")
    config = dict(export["config"], device=device)
    sem = export["semantic_ids"]
    catalog = _Catalog(config["ITEM_ID_FIELD"], len(export["item_tokens"]), sem["codes"].numpy(), sem["level_sizes"])
    model = get_model(export["model"])(config, catalog)
    if export.get("state_dict") is not None:
        model.load_state_dict(export["state_dict"])
    return model.to(device).eval()


class Recommender:
    """A trained generative recommender and its item catalog (tokens, titles, semantic IDs)."""

    def __init__(self, export, device="cpu"):
        self.export, self.device = export, torch.device(device)
        self.model = build_model(export, self.device)
        self.item_tokens = list(export["item_tokens"])  # internal id -> token (0 = [PAD])
        self.titles = list(export["item_titles"])
        self.token2id = {t: i for i, t in enumerate(self.item_tokens) if i > 0}
        users = export.get("user_tokens")
        self.user2id = {t: i for i, t in enumerate(users) if i > 0} if users else None

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        from recbole_gflowgr.export import load_export

        return cls(load_export(path), device)

    @property
    def n_items(self):
        return len(self.item_tokens) - 1

    def __repr__(self):
        return f"Recommender({self.export['model']}, {self.export['finetune']}, {self.n_items} items)"

    # ----- histories --------------------------------------------------------------------------------------------
    def _item_ids(self, histories, skip_unknown):
        """Internal ids per history (last max_seq_length items); unknown tokens raise or, if skipped, warn."""
        unknown, out = {}, []
        for h, history in enumerate(histories):
            if isinstance(history, str):
                raise UnknownItemError(f"history #{h} is a string '{history[:40]}'; give a list of item tokens")
            ids = [self.token2id.get(str(t)) for t in history]
            missing = [str(t) for t, i in zip(history, ids) if i is None]
            if missing:
                unknown[h] = missing
            ids = [i for i in ids if i is not None][-self.model.max_seq_length:]
            if not ids and (skip_unknown or not missing):
                raise UnknownItemError(f"history #{h} has no known item ({len(history)} given); give at least one "
                                       "item of the model's catalog")
            out.append(ids)
        names = sorted({t for ts in unknown.values() for t in ts})
        if names and not skip_unknown:
            where = ", ".join(f"#{h}" for h in list(unknown)[:5])
            raise UnknownItemError(f"{len(names)} item(s) not in the model's catalog: {', '.join(names[:10])}"
                                   f"{' ...' if len(names) > 10 else ''} (histories {where}); add them with their "
                                   "text (add_items / --new-items) or skip them (skip_unknown / --skip-unknown)")
        if names:
            warnings.warn(f"skipped {len(names)} unknown item(s) in {len(unknown)} history(ies): "
                          f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}", stacklevel=3)
        return out, unknown

    def _interaction(self, ids, users):
        """RecBole-style batch: item sequences (B, S) left-aligned and 0-padded, their lengths (B,), user ids (B,)."""
        m = self.model
        seq = torch.zeros(len(ids), max(len(i) for i in ids), dtype=torch.long)  # (B, S)
        for row, items in enumerate(ids):
            seq[row, :len(items)] = torch.tensor(items)
        user_ids = [self.user2id.get(str(u), 0) if self.user2id and u is not None else 0 for u in users]
        return {m.ITEM_SEQ: seq.to(self.device), m.ITEM_SEQ_LEN: torch.tensor([len(i) for i in ids], device=self.device),
                m.USER_ID: torch.tensor(user_ids, device=self.device)}

    # ----- recommendations --------------------------------------------------------------------------------------
    def recommend(self, history, k=10, user=None, skip_unknown=False, beam_size=None):
        """Top-``k`` [(item token, title, score)] after ``history`` (item tokens, oldest first), best first."""
        return self.recommend_many([history], k, None if user is None else [user], skip_unknown, beam_size)[0]

    @torch.no_grad()
    def recommend_many(self, histories, k=10, users=None, skip_unknown=False, beam_size=None, batch_size=256,
                       progress=None):
        """One top-``k`` list per history (see :meth:`recommend`), batched ``batch_size`` histories at a time.
        ``users``: optional user tokens (models trained with ``user_id_buckets`` > 0; unknown -> RecBole's padding
        user). ``progress``: optional callable(n_done) after each batch."""
        if not isinstance(k, int) or k < 1:
            from recbole_gflowgr.foundation.errors import ConfigError

            raise ConfigError(f"k={k}: give a positive integer number of recommendations")
        ids, _ = self._item_ids(histories, skip_unknown)
        users = list(users) if users is not None else [None] * len(ids)
        beam = max(k, beam_size or self.model.beam_size)
        out = []
        for start in range(0, len(ids), batch_size):
            batch = self._interaction(ids[start:start + batch_size], users[start:start + batch_size])
            items, scores = self.model.beam_search(batch, beam_size=beam)  # (B, beam) RecBole ids, log-probs
            for row_items, row_scores in zip(items[:, :k].tolist(), scores[:, :k].tolist()):
                out.append([(self.item_tokens[i], self.titles[i], s) for i, s in zip(row_items, row_scores) if i > 0])
            if progress:
                progress(len(batch[self.model.ITEM_SEQ_LEN]))
        return out

    # ----- new items --------------------------------------------------------------------------------------------
    def add_items(self, items, text_encoder=None, batch_size=128):
        """Give items the model never saw a semantic ID from their text ``{token: {field: text}}`` with the trained
        tokenizer and make them recommendable; returns {token: codes}. All-or-nothing: on error nothing changes.
        ``text_encoder``: a local model folder replacing the checkpoint's (if that is not on this machine)."""
        from recbole_gflowgr.data.convert import _text
        from recbole_gflowgr.model.beam_search import SemanticIDTrie
        from recbole_gflowgr.model.tiger import N_SPECIAL
        from recbole_gflowgr.new_items import NewItemError, assign_ids

        if not isinstance(items, dict) or not items:
            raise NewItemError("new items: give a non-empty {item token: {field: text}} mapping")
        items = {str(t): v for t, v in items.items()}
        known = [t for t in items if t in self.token2id]
        if known:
            raise NewItemError(f"new items {', '.join(known[:5])} are already in the catalog; give new item tokens")
        m, sizes = self.model, self.model.level_sizes
        offsets = torch.tensor([N_SPECIAL + sum(sizes[:lv]) for lv in range(len(sizes))], device=self.device)
        existing = (m.item_tokens[1:] - offsets).cpu().numpy()  # (n_items, L) per-level codes
        codes = assign_ids(items, self.export["tokenizer"], existing, sizes, text_encoder, batch_size,
                           str(self.device))  # (n_new, L)
        tokens = torch.cat([m.item_tokens, torch.as_tensor(codes, device=self.device) + offsets])  # (n_items + n_new, L)
        m._trie = SemanticIDTrie(tokens[1:])  # trie item i <-> internal id i + 1
        m.item_tokens = tokens
        m.n_items = len(tokens)
        title = self.export["tokenizer"]["title_field"]
        for token, fields in items.items():
            self.token2id[token] = len(self.item_tokens)
            self.item_tokens.append(token)
            self.titles.append(_text(fields.get(title) or ""))
        return {t: c.tolist() for t, c in zip(items, codes)}


# ----- command line ---------------------------------------------------------------------------------------------
def _read_histories(path):
    """[(history, user, row id)] from a jsonl file: {"history": [...], "user": ..., "id": ...} or a bare list."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise GFlowGRError(f"{path} line {n}: not JSON ({e.msg}); one {{\"history\": [...]}} per line") from None
            row = {"history": row} if isinstance(row, list) else row
            if not isinstance(row, dict) or not isinstance(row.get("history"), list):
                raise GFlowGRError(f"{path} line {n}: give {{\"history\": [item tokens]}} or a list of item tokens")
            rows.append((row["history"], row.get("user"), row.get("id", n)))
    return rows


def _write_jsonl(rows, path):
    from recbole_gflowgr.foundation.utils import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _table(recs):
    width = max([4] + [len(t) for t, _, _ in recs])
    lines = [f"{'rank':>4}  {'item':<{width}}  {'score':>8}  title"]
    for rank, (token, title, score) in enumerate(recs, 1):
        lines.append(f"{rank:>4}  {token:<{width}}  {score:>8.4f}  {title[:70]}")
    return "\n".join(lines)


def _load_new_items(path):
    if not os.path.isfile(path):
        raise GFlowGRError(f"--new-items {path} does not exist; give a json file {{item token: {{field: text}}}}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise GFlowGRError(f"--new-items {path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None


def run(args):
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    rec = Recommender.from_checkpoint(args.checkpoint, args.device)
    if args.new_items:
        added = rec.add_items(_load_new_items(args.new_items))
        print(f"added {len(added)} new item(s): " + ", ".join(f"{t} {c}" for t, c in list(added.items())[:5]),
              file=sys.stderr)
    if args.history is not None:
        history = args.history.replace(",", " ").split()
        print(_table(rec.recommend(history, args.k, args.user, args.skip_unknown)))
        return 0
    rows = _read_histories(args.input)
    with tqdm(total=len(rows), desc="recommend", unit="history", ncols=100, file=sys.stderr) as bar:
        recs = rec.recommend_many([r[0] for r in rows], args.k, [r[1] for r in rows], args.skip_unknown,
                                  batch_size=args.batch_size, progress=bar.update)
    known = rec.token2id
    _write_jsonl([{"id": rid, "user": user, "skipped": [t for t in hist if str(t) not in known],
                   "recommendations": [{"item": t, "title": title, "score": round(s, 6)} for t, title, s in r]}
                  for (hist, user, rid), r in zip(rows, recs)], args.output)
    print(f"{len(rows)} histories -> {args.output}", file=sys.stderr)
    return 0


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="exported checkpoint (the \"export\" of a result row)")
    parser.add_argument("--history", help="item tokens, oldest first, separated by spaces or commas")
    parser.add_argument("--user", default=None, help="user token (models trained with user_id_buckets > 0)")
    parser.add_argument("--input", help="jsonl: one {\"history\": [...], \"user\": ..., \"id\": ...} per line")
    parser.add_argument("--output", help="jsonl written (atomically) with --input")
    parser.add_argument("--k", type=int, default=10, help="recommendations per history (default 10)")
    parser.add_argument("--skip-unknown", action="store_true", help="drop unknown history items with a warning")
    parser.add_argument("--new-items", help="json {item token: {field: text}} of items to add before recommending")
    parser.add_argument("--batch-size", type=int, default=256, help="histories per beam search batch (--input)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if (args.history is None) == (args.input is None):
        parser.error("give exactly one of --history or --input")
    if args.input and not args.output:
        parser.error("--input needs --output (a jsonl file)")
    if args.input and not os.path.isfile(args.input):
        parser.error(f"--input {args.input} does not exist")
    warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
