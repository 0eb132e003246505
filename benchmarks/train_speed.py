"""Training speed of the generative backbone, ours vs the alternatives, in one run on the same batches:

1. SFT with length-bucketed batches (ours, ``length_buckets``) vs every history padded to the batch's longest
   (``length_buckets=1``) vs padded to MAX_ITEM_LIST_LENGTH (20 items = 80 tokens, the naive way):
   sequences/s and ratios.
2. Achieved model FLOP/s (FLOPs of one SFT step counted by torch's FlopCounterMode) ÷ dense fp32 matmul FLOP/s
   measured in the same run.
3. GFlowGR-TB (N = --n_aug augmented trajectories, shared encoder) time per batch ÷ SFT time per batch, the two
   steps taken in turn on each batch (a shared machine's load then weighs on both alike).
4. DPO (policy + frozen reference log-probs of chosen and rejected items) per history-length group (ours) vs on
   the whole batch padded to its longest history, time per batch and ratio (in turn on each batch, as in 3).

Semantic IDs are random distinct 4-token IDs (timing does not depend on their content) and the collaborative
model is an untrained RecBole SASRec (same cost as a trained one), so the script needs no tokenizer or CM cache.

    python benchmarks/train_speed.py [--dataset=ml-100k] [--size=paper|small] [--batches=10] [--threads=N]
"""
import argparse
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import recbole_gflowgr  # noqa: E402,F401
import recbole_gflowgr.model.tiger as tiger  # noqa: E402
from recbole_gflowgr.config import PROPERTIES  # noqa: E402
from recbole_gflowgr.quick_start import load_config, prepare_data  # noqa: E402
from recbole_gflowgr.registry import get_model  # noqa: E402


def random_ids(config, tokenizer):
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    with open(path, encoding="utf-8") as f:
        items = [line.split("\t", 1)[0] for line in f][1:]
    rng = np.random.default_rng(0)
    codes = rng.permutation(256 ** 3)[: len(items)]
    codes = np.stack([codes // 65536, codes // 256 % 256, codes % 256, np.zeros_like(codes)], 1)
    return types.SimpleNamespace(item_tokens=items, codes=codes, level_sizes=[256, 256, 256, 1], path="random")


def matmul_flops(n=1024, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def time_steps(step, batches):
    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return (time.perf_counter() - start) / (len(batches) - 1)


def time_interleaved(steps, batches):
    """Mean seconds per batch of each of ``steps`` (name -> step), run in turn on every batch, so that a change of
    machine load during the measurement affects all of them alike (their ratio is what we report)."""
    for step in steps.values():
        step(batches[0])  # warm-up
    total = dict.fromkeys(steps, 0.0)
    for batch in batches[1:]:
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            total[name] += time.perf_counter() - start
    return {name: t / (len(batches) - 1) for name, t in total.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--size", default="paper", choices=["paper", "small"])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--n_aug", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tiger.fetch_semantic_ids = random_ids
    files = [os.path.join(PROPERTIES, "small.yaml")] if args.size == "small" else []
    config = load_config("TIGER", args.dataset, config_file_list=files,
                         config_dict={"show_progress": False, "finetune": "gflowgr-tb", "gflowgr_n_aug": args.n_aug})
    _, (train_data, _, _) = prepare_data(config)
    torch.manual_seed(0)
    model = get_model("TIGER")(config, train_data._dataset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = iter(train_data)
    batches = [next(it) for _ in range(args.batches + 1)]
    n_seq = len(batches[0])
    params = sum(p.numel() for p in model.t5.parameters())
    print(f"TIGER ({args.size}: {params / 1e6:.2f}M parameters) on {args.dataset}, batch {n_seq}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    def sft_step(batch):
        opt.zero_grad()
        model.calculate_loss(batch).backward()
        opt.step()

    results = {}
    full = model.max_seq_length
    for name, buckets, pad_full in [("bucketed (ours)", config["length_buckets"], False),
                                    ("batch-longest", 1, False), ("padded to 20 items", 1, True)]:
        model.length_buckets = buckets
        model.pad_to = full if pad_full else None
        results[name] = time_steps(sft_step, batches)
        print(f"SFT {name:>20}: {results[name]:.3f} s/batch, {n_seq / results[name]:.0f} sequences/s")
    model.pad_to = None
    model.length_buckets = config["length_buckets"]
    base = results["padded to 20 items"]
    print(f"speed-up of bucketed over padded-to-20: {base / results['bucketed (ours)']:.2f}x, "
          f"over batch-longest: {results['batch-longest'] / results['bucketed (ours)']:.2f}x")

    with FlopCounterMode(display=False) as counter:
        sft_step(batches[1])
    achieved = counter.get_total_flops() / results["bucketed (ours)"]
    peak = matmul_flops()
    print(f"model FLOP/s {achieved / 1e9:.1f} G vs dense 1024^3 matmul {peak / 1e9:.1f} G: {achieved / peak:.0%}")

    from recbole.model.sequential_recommender import SASRec

    from recbole_gflowgr.collaborative import CollaborativeScorer
    from recbole_gflowgr.finetune.gflowgr.trainer import GFlowGRTrainer

    cm_config = load_config("SASRec", args.dataset, config_dict={"show_progress": False})
    trainer = GFlowGRTrainer(config, model)
    trainer.scorer = CollaborativeScorer(SASRec(cm_config, train_data._dataset))
    trainer.epoch_idx, trainer.n_batches, trainer.batch_idx = 0, len(batches), 0
    trainer.stats = {"log_z": 0.0, "reward": 0.0, "weight": 0.0}

    def gfn_step(batch):
        trainer.optimizer.zero_grad()
        sum(trainer.gflowgr_loss(batch)).backward()
        trainer.optimizer.step()

    pair = time_interleaved({"sft": sft_step, "gfn": gfn_step}, batches)  # SFT and GFlowGR in turn, same batches
    print(f"GFlowGR-TB (N={args.n_aug}): {pair['gfn']:.3f} s/batch vs SFT (bucketed) {pair['sft']:.3f} s/batch in "
          f"turn on the same batches: {pair['gfn'] / pair['sft']:.2f}x")

    from recbole_gflowgr.finetune.common import freeze, pair_loss, uniform_negatives

    ref_t5, gen = freeze(model.t5), torch.Generator().manual_seed(0)
    negatives = [uniform_negatives(b[model.ITEM_SEQ], b[model.POS_ITEM_ID], model.n_items, 1, gen) for b in batches]
    pairs = list(zip(batches, negatives))

    def dpo_step(pair):
        batch, neg = pair
        opt.zero_grad()
        pair_loss(model, ref_t5, batch, batch[model.POS_ITEM_ID], neg, 0.1)[0].mean().backward()
        opt.step()

    def with_buckets(buckets):
        def step(pair):
            model.length_buckets = buckets
            dpo_step(pair)
        return step

    dpo = time_interleaved({"grouped (ours)": with_buckets(config["length_buckets"]), "whole batch": with_buckets(1)},
                           pairs)
    model.length_buckets = config["length_buckets"]
    for name, t in dpo.items():
        print(f"DPO {name:>15}: {t:.3f} s/batch")
    print(f"DPO speed-up of length groups: {dpo['whole batch'] / dpo['grouped (ours)']:.2f}x")


if __name__ == "__main__":
    main()
