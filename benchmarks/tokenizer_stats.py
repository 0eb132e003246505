"""Semantic-ID statistics of our tokenizers (rqvae = TIGER's RQ-VAE, letter = LETTER) and of the IDs LETTER published.

    python benchmarks/tokenizer_stats.py                      # amazon-beauty and yelp, rqvae and letter, seed 42
    python benchmarks/tokenizer_stats.py --datasets yelp --tokenizers rqvae

Writes one row per dataset x tokenizer (+ "letter-published", from ../shared/data/<dataset>/<Prefix>.index.json) to
results/tokenizer_stats.jsonl (rows of other dataset/tokenizer pairs already there are kept) and the markdown table
of all rows to results/tokenizer_stats.md. IDs are computed by ``get_semantic_ids`` (or read from its cache, with the
times of the run that computed them); wall_s = text embedding time (when first computed) + tokenizer training time,
without LETTER's SASRec training (cf_s). Each row also says how many of the dataset's test targets (every user's last
item, RecBole's leave-one-out split) sit in a collision group, i.e. share their semantic code with another item and
are told apart by the disambiguation token alone: ``test_targets_in_groups`` (share) and ``test_target_group_mean``
(mean size of their groups); a hit lost there is at most that share of the test set.
"""
import argparse
import collections
import json
import logging
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from recbole_gflowgr.data.convert import letter_sequences, prepare_dataset  # noqa: E402
from recbole_gflowgr.data.registry import require_dataset_spec  # noqa: E402
from recbole_gflowgr.trainer.results import git_commit  # noqa: E402
from recbole_gflowgr.tokenizer import (code_stats, get_semantic_ids, load_tokenizer_config,  # noqa: E402
                                       parse_index_json)
from recbole_gflowgr.tokenizer.embeddings import item_text_embeddings, load_item_texts  # noqa: E402

RESULTS = os.path.join(REPO, "results")
ORDER = {"rqvae": 0, "letter": 1, "letter-published": 2}


def test_targets(dataset, source_path=None):
    """Every user's last item (the test target of the leave-one-out split) of ``<Prefix>.inter.json``; None for a
    dataset in another format."""
    sequences = letter_sequences(dataset, source_path)
    return None if sequences is None else [seq[-1] for seq in sequences.values() if seq]


def target_collisions(item_tokens, semantic, targets):
    """(share of ``targets`` whose row of ``semantic`` (n_items, L: the semantic levels, no disambiguation column)
    another item shares, mean group size of those targets) — (0.0, None) when none does."""
    keys = [row.tobytes() for row in np.ascontiguousarray(semantic)]
    size = collections.Counter(keys)
    group = {item: size[key] for item, key in zip(item_tokens, keys)}
    sizes = [group[t] for t in targets if group.get(t, 1) > 1]
    return round(len(sizes) / len(targets), 6), (round(float(np.mean(sizes)), 2) if sizes else None)


def collision_fields(dataset, item_tokens, semantic):
    targets = test_targets(dataset)
    if not targets:
        return {"test_targets_in_groups": None, "test_target_group_mean": None}
    share, mean = target_collisions(item_tokens, semantic, targets)
    return {"test_targets_in_groups": share, "test_target_group_mean": mean}


def our_row(dataset, tokenizer, args):
    from recbole_gflowgr.quick_start import sasrec_item_embeddings  # LETTER's collaborative embeddings

    ids = get_semantic_ids(dataset, tokenizer, args.data_path, {"seed": args.seed}, args.device,
                           cf_embeddings=sasrec_item_embeddings)
    s = ids.stats
    semantic = s["levels"][:-1]
    return {"dataset": dataset, "tokenizer": tokenizer, "n_items": s["n_items"], "levels": len(semantic),
            "collision_rate": s["collision_rate"], "collision_rate_nearest_code": s.get("collision_rate_nearest_code"),
            "unique_ids_before": s["unique_ids_before"], "unique_ids": s["unique_ids"],
            "max_collision_group": s["max_collision_group"], "code_usage": [lv["usage"] for lv in semantic],
            "codes_used": [lv["used"] for lv in semantic], "perplexity": [lv["perplexity"] for lv in semantic],
            "seed": s["seed"], "device": args.device, "epochs": s["epochs"], "best_epoch": s.get("best_epoch"),
            "batch_size": s["batch_size"], "encode_s": s.get("encode_s"), "train_s": s["train_s"],
            "cf_s": s.get("cf_s"), "wall_s": round((s.get("encode_s") or 0) + s["train_s"], 1),
            "load_avg": s.get("load_avg"), "threads": s.get("threads"),
            "note": s["note"], "commit": git_commit(), "path": os.path.relpath(ids.path, REPO),
            **collision_fields(dataset, ids.item_tokens, ids.codes[:, :-1])}


def published_row(dataset, source_path=None):
    spec = require_dataset_spec(dataset, source_path)
    path = os.path.join(spec.default_source, f"{spec.prefix}.index.json")
    if not os.path.isfile(path):
        return None
    items, codes = parse_index_json(path)
    st = code_stats(codes, [256] * codes.shape[1])  # LETTER's codebooks: 256 codes per level
    groups = {}
    for row in map(tuple, codes.tolist()):
        groups[row] = groups.get(row, 0) + 1
    return {"dataset": dataset, "tokenizer": "letter-published", "n_items": len(items), "levels": codes.shape[1],
            "collision_rate": st["collision_rate"], "collision_rate_nearest_code": None,
            "unique_ids_before": st["unique_ids"], "unique_ids": st["unique_ids"],
            "max_collision_group": max(groups.values()), "code_usage": [lv["usage"] for lv in st["levels"]],
            "codes_used": [lv["used"] for lv in st["levels"]],
            "perplexity": [lv["perplexity"] for lv in st["levels"]], "seed": None, "device": None, "epochs": None,
            "best_epoch": None, "batch_size": None, "encode_s": None, "train_s": None, "cf_s": None, "wall_s": None,
            "note": f"IDs published with LETTER ({os.path.basename(path)}), as is (no disambiguation)",
            "commit": git_commit(), "path": os.path.relpath(path, REPO), **collision_fields(dataset, items, codes)}


def duplicate_rates(dataset, data_path):
    """(share of items whose text equals an earlier item's, share whose text embedding does): floors for the
    collision rate of text-only tokenizers, identical inputs getting identical codes (MiniLM is uncased)."""
    cfg = load_tokenizer_config("rqvae", dataset)
    texts = load_item_texts(data_path, dataset, cfg["text_fields"])
    _, emb = item_text_embeddings(data_path, dataset, cfg["text_fields"], cfg["text_encoder"], show_progress=False)
    same_emb = len({row.tobytes() for row in np.round(emb, 4)})  # equal texts' embeddings differ by < 1e-6
    return round(1 - len(set(texts.values())) / len(texts), 6), round(1 - same_emb / len(emb), 6)


def markdown(rows):
    head = ("| dataset | tokenizer | items | levels | collision rate (before disamb.) | unique IDs (before) "
            "| max group | test targets in groups (mean size) | codes used / level | perplexity / level "
            "| wall s (embed + train) | epochs (kept) |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        epochs = "-" if r["epochs"] is None else f"{r['epochs']} ({r.get('best_epoch') or r['epochs']})"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f} ({r['encode_s'] or 0:.0f} + {r['train_s']:.0f})"
        lines.append(f"| {r['dataset']} | {r['tokenizer']} | {r['n_items']} | {r['levels']} "
                     f"| {r['collision_rate']:.2%} | {r['unique_ids_before']} | {r['max_collision_group']} "
                     f"| {_targets(r)} "
                     f"| {' / '.join(map(str, r['codes_used']))} | {' / '.join(f'{p:.0f}' for p in r['perplexity'])} "
                     f"| {wall} | {epochs} |")
    floors = {r["dataset"]: (r.get("duplicate_text_rate"), r.get("duplicate_embedding_rate")) for r in rows}
    notes = [f"{d}: {t:.2%} of items have the same text as another item, {e:.2%} the same MiniLM embedding (it is "
             f"uncased): a floor for the collision rate of our text-only tokenizers" for d, (t, e) in floors.items()
             if t is not None and e is not None]
    return "\n".join(lines) + "\n\n" + "".join(f"- {n}\n" for n in notes)


def _targets(row):
    share = row.get("test_targets_in_groups")
    if share is None:
        return "-"
    return f"{share:.2%}" + (f" ({row['test_target_group_mean']:.1f})" if row.get("test_target_group_mean") else "")


def compare(rows):
    """Lines saying whether our LETTER IDs have no worse code usage / collisions than the published ones."""
    out = []
    by = {(r["dataset"], r["tokenizer"]): r for r in rows}
    for (dataset, tok), pub in by.items():
        ours = by.get((dataset, "letter"))
        if tok != "letter-published" or ours is None:
            continue
        usage = all(a >= b for a, b in zip(ours["codes_used"], pub["codes_used"]))
        coll = ours["collision_rate"] <= pub["collision_rate"]
        out.append(f"{dataset}: letter vs published: codes used per level {ours['codes_used']} vs "
                   f"{pub['codes_used']} ({'not worse' if usage else 'WORSE'}), collision rate "
                   f"{ours['collision_rate']:.3%} vs {pub['collision_rate']:.3%} ({'not worse' if coll else 'WORSE'})")
    return out


def write(rows, path):
    """Rows sorted by dataset and tokenizer -> ``path`` (jsonl) and the markdown table -> ``<path>.md``."""
    ordered = sorted(rows.values(), key=lambda r: (r["dataset"], ORDER.get(r["tokenizer"], 9)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for target, text in ((path, "".join(json.dumps(r) + "\n" for r in ordered)),
                         (os.path.splitext(path)[0] + ".md", markdown(ordered))):
        with open(target + ".tmp", "w") as f:
            f.write(text)
        os.replace(target + ".tmp", target)
    return markdown(ordered)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["amazon-beauty", "yelp"])
    parser.add_argument("--tokenizers", nargs="*", default=["rqvae", "letter"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for everything (text encoder, "
                        "LETTER's SASRec); the tokenizers train with their cpu_threads key (default 1)")
    parser.add_argument("--data_path", default=os.path.join(REPO, "dataset"))
    parser.add_argument("--results", default=os.path.join(RESULTS, "tokenizer_stats.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    rows = {}
    if os.path.isfile(args.results):
        with open(args.results) as f:
            rows = {(r["dataset"], r["tokenizer"]): r for r in map(json.loads, filter(str.strip, f))}
    pending = []
    for dataset in args.datasets:
        prepare_dataset(dataset, os.path.join(args.data_path, dataset))
        text_dup, emb_dup = duplicate_rates(dataset, args.data_path)
        floor = {"duplicate_text_rate": text_dup, "duplicate_embedding_rate": emb_dup}
        pub = published_row(dataset)
        if pub is not None:
            rows[(dataset, "letter-published")] = dict(pub, **floor)
        for tokenizer in args.tokenizers:
            start = time.time()
            try:
                rows[(dataset, tokenizer)] = dict(our_row(dataset, tokenizer, args), **floor)
            except ImportError as e:  # the collaborative SASRec's embeddings not there yet
                pending.append(f"{dataset} {tokenizer}: pending ({e})")
                continue
            logging.info(f"{dataset} {tokenizer}: done in {time.time() - start:.0f} s")
            write(rows, args.results)  # after every row: a long run (LETTER's SASRec) keeps what it has
    table = write(rows, args.results)
    print(table)
    for line in compare(rows.values()) + pending:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
