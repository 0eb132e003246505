"""Latency and throughput of ``Recommender`` (recommend.py) on CPU for an amazon-beauty-size catalog.

Default: a **synthetic** exported checkpoint: TIGER with the default backbone of
``recbole_gflowgr/properties/model/TIGER.yaml`` (4 + 4 layers, d_model 128, 6 heads x 64, d_ff 1024) and random
weights (seed 0), and a random semantic-ID map of 12,101 items (amazon-beauty's count): 3 uniform levels x 256 codes
+ the disambiguation token, as the RQ-VAE gives. Beam search cost depends on the catalog's trie and the backbone
size, not on what the weights learned, so this stands in for a trained model; ``--checkpoint=<export>`` measures
a real one instead. Histories: random items, length uniform in 1..MAX_ITEM_LIST_LENGTH (20).

Measured: checkpoint load time, single-request latency (``recommend``, one history, k=10, beam 20) p50/p99 over
``--requests`` calls, and batched throughput (``recommend_many``) at each ``--batch-sizes``.

    python benchmarks/recommend_latency.py --threads 2
    python benchmarks/recommend_latency.py --checkpoint=saved/TIGER-<time>.export.pth --threads 1
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gflowgr.recommend import Recommender  # noqa: E402

N_ITEMS = 12101  # amazon-beauty


def synthetic_export(path, n_items, seed=0):
    """Write a synthetic TIGER export (default backbone, random weights, random IDs of ``n_items``) to ``path``."""
    from recbole_gflowgr.export import make_export
    from recbole_gflowgr.foundation.utils import atomic_save
    from recbole_gflowgr.quick_start import load_config
    from recbole_gflowgr.recommend import build_model
    from recbole_gflowgr.tokenizer.semantic_ids import disambiguate
    from recbole_gflowgr.trainer.results import plain_config

    config = plain_config(load_config("TIGER", "amazon-beauty", cmd_args=["--show_progress=False"]))
    rng = np.random.default_rng(seed)
    codes, max_group = disambiguate(rng.integers(0, 256, (n_items, 3)))  # (n, 4), last = disambiguation
    codes = np.concatenate([np.zeros((1, 4), dtype=np.int64), codes])  # row 0 = [PAD]
    tokens = ["[PAD]"] + [f"I{i:05d}" for i in range(n_items)]
    torch.manual_seed(seed)
    bare = {"model": "TIGER", "config": config, "item_tokens": tokens, "state_dict": None,
            "semantic_ids": {"codes": torch.as_tensor(codes), "level_sizes": [256, 256, 256, max_group]}}
    model = build_model(bare)
    tokenizer = {"name": "rqvae", "config": None, "text_fields": ["title"], "title_field": "title", "quantiser": None}
    atomic_save(make_export(model, config, tokens, [f"synthetic item {i}" for i in range(n_items + 1)], tokenizer,
                            extra={"note": "synthetic: random weights and semantic IDs"}), path)
    return path


def percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an exported checkpoint; default: a synthetic one (see above)")
    parser.add_argument("--items", type=int, default=N_ITEMS, help="synthetic catalog size (default 12101)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--requests", type=int, default=200, help="single requests timed")
    parser.add_argument("--batch-sizes", default="32,256", help="recommend_many batch sizes")
    parser.add_argument("--histories", type=int, default=1024, help="histories per throughput measurement")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint or synthetic_export(os.path.join(tmp, "synthetic.export.pth"), args.items)
        start = time.perf_counter()
        rec = Recommender.from_checkpoint(path)
        load_s = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 2 ** 20
    rng = np.random.default_rng(1)
    catalog = rec.item_tokens[1:]
    max_len = rec.model.max_seq_length

    def history():
        return [catalog[i] for i in rng.integers(0, len(catalog), rng.integers(1, max_len + 1))]

    for _ in range(5):  # warm-up
        rec.recommend(history(), k=args.k)
    times = []
    for _ in range(args.requests):
        h = history()
        start = time.perf_counter()
        rec.recommend(h, k=args.k)
        times.append(time.perf_counter() - start)
    result = {"checkpoint": args.checkpoint or f"synthetic ({rec.n_items} items, default TIGER backbone)",
              "items": rec.n_items, "beam": max(args.k, rec.model.beam_size), "k": args.k, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_avg_start": round(os.getloadavg()[0], 2), "torch": torch.__version__,
              "checkpoint_mb": round(size_mb, 1), "load_s": round(load_s, 2),
              "single_p50_ms": round(percentile(times, 50), 1), "single_p99_ms": round(percentile(times, 99), 1),
              "single_mean_ms": round(float(np.mean(times)) * 1000, 1)}
    batch = [history() for _ in range(args.histories)]
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        start = time.perf_counter()
        rec.recommend_many(batch, k=args.k, batch_size=bs)
        result[f"batch{bs}_per_s"] = round(args.histories / (time.perf_counter() - start), 1)
    result["load_avg_end"] = round(os.getloadavg()[0], 2)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
