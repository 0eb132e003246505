"""Training speed of the generative backbone: SFT vs GFlowGR-TB per dataset, and ours vs the previous ways.

With no arguments (``python benchmarks/train_speed.py``) it measures, per dataset — industrial-scientific and
amazon-beauty (when its data are under ../shared/data) with ``properties/small.yaml``, ml-100k with the demo config
(gflowgr.yaml + small.yaml + demo.yaml) — a few batches (``--batches``) and prints

    SFT sequences/s <dataset>: <n>                      (length-bucketed SFT steps: forward, backward, AdamW)
    SFT FLOP share <dataset>: <p>%                       (analytic model FLOPs / time, over dense matmul FLOP/s
                                                          measured in the same run)
    ratio gflowgr-tb/sft <dataset>: <x>x                 (time per batch, the two steps in turn on the same batches)
    theoretical gflowgr-tb/sft <dataset>: <y>x           (analytic FLOPs, :func:`step_flops`, at the batches' history lengths)

and, timed in the same turns, SFT padded to the batch's longest history (the previous way) against ours
(``--profile=N``: also the top N ops of the SFT and GFlowGR-TB steps by self CPU time, torch.profiler). The same
lines follow, tagged ``(fast_dropout on)``, for a model with the ``fast_dropout`` key on (same weights, same batches,
in the same turns; ``--fast_dropout=0``: not timed) with its speed-up over the default keys; ``--compile`` adds
``compile: True`` (inductor: minutes of compilation, timed apart) and its eval-mode loss difference to eager.
``--only=a,b`` measures only those datasets.

With ``--dataset=<name>`` it runs the detailed comparison on that dataset only (``--size=paper|small``):

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


def random_ids(config, tokenizer, cf_embeddings=None):
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


def t5_forward_flops(cfg, S, T, n_ff, head=None, cross_kv=True, encoder=True):
    """Matmul FLOPs (2 per multiply-add) of one T5 forward for one sequence: an encoder over ``S`` tokens (if
    ``encoder``), a decoder over ``T`` tokens attending to them (its cross-attention K/V projections of the ``S``
    encoder states only if ``cross_kv``) and an output head of ``head`` rows (default: the vocabulary) per decoder
    token. ``S`` may be a tensor of per-sequence lengths (the sum over them is returned). ``n_ff``: feed-forward
    matrices (2 for relu, 3 for gated)."""
    d, inner, ff = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff
    S = torch.as_tensor(S, dtype=torch.float64)
    out = torch.zeros_like(S)
    if encoder:
        out += cfg.num_layers * (8 * S * d * inner + 4 * S * S * inner + 2 * n_ff * S * d * ff)
    dec = 8 * T * d * inner + 4 * T * T * inner  # self-attention: Q, K, V, O projections; scores and A @ V
    dec = dec + 4 * T * d * inner + 4 * T * S * inner  # cross-attention: Q, O projections; scores and A @ V
    dec = dec + (4 * S * d * inner if cross_kv else 0) + 2 * n_ff * T * d * ff
    out += cfg.num_decoder_layers * dec
    out += 2 * T * d * (cfg.vocab_size if head is None else head)
    return float(out.sum())


def step_flops(model, batch, n_aug):
    """(SFT, GFlowGR-TB) analytic FLOPs of one training step (forward + backward = 3 forwards) on ``batch`` at its
    rows' true history lengths: SFT = encoder + decoder over the target's L tokens + full-vocabulary head;
    GFlowGR = the same pass (its positive also gets the constrained per-level head) + ``n_aug`` more decoder passes
    that share the encoder and the cross-attention K/V, each with the per-level heads (the allowed children's
    logits of each level)."""
    cfg = model.t5.config
    n_ff = 3 if cfg.is_gated_act else 2
    S = model.encoder_inputs(batch)[1].sum(1)  # (B,) true token lengths
    L = model.code_len
    levels = 2 * cfg.d_model * sum(model.level_sizes) * len(S)  # one row's constrained heads over the L levels
    sft = t5_forward_flops(cfg, S, L, n_ff)
    extra = t5_forward_flops(cfg, S, L, n_ff, head=0, cross_kv=False, encoder=False)
    gfn = sft + levels + n_aug * (extra + levels)
    return 3 * sft, 3 * gfn


DATASETS = [("industrial-scientific", ["small.yaml"]), ("ml-100k", ["gflowgr.yaml", "small.yaml", "demo.yaml"]),
            ("amazon-beauty", ["small.yaml"])]


def build(dataset, files, n_aug, n_batches):
    config = load_config("TIGER", dataset, config_file_list=[os.path.join(PROPERTIES, f) for f in files],
                         config_dict={"show_progress": False, "finetune": "gflowgr-tb", "gflowgr_n_aug": n_aug})
    _, (train_data, _, _) = prepare_data(config)
    torch.manual_seed(0)
    model = get_model("TIGER")(config, train_data._dataset)
    it = iter(train_data)
    batches = [next(it) for _ in range(min(n_batches + 1, len(train_data)))]
    return config, model, train_data, batches


def gflowgr_step(config, model, train_data, n_batches):
    from recbole.model.sequential_recommender import SASRec

    from recbole_gflowgr.model.collaborative import CollaborativeScorer
    from recbole_gflowgr.finetune.gflowgr.trainer import GFlowGRTrainer

    cm_config = load_config("SASRec", config["dataset"], config_dict={"show_progress": False})
    trainer = GFlowGRTrainer(config, model)
    torch.manual_seed(0)  # every model's step gets the same (untrained) collaborative model
    trainer.scorer = CollaborativeScorer(SASRec(cm_config, train_data._dataset))
    trainer.epoch_idx, trainer.n_batches, trainer.batch_idx = 0, n_batches, 0
    trainer.stats = {"log_z": 0.0, "reward": 0.0, "weight": 0.0}

    def step(batch):
        trainer.optimizer.zero_grad()
        sum(trainer.gflowgr_loss(batch)).backward()
        trainer.optimizer.step()
    return step


def steps(config, model, train_data, n_batches):
    """(SFT step (batch, length groups), GFlowGR-TB step (batch)) of ``model``, each with its own optimiser."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    buckets = config["length_buckets"]

    def sft_step(batch, groups=buckets):
        model.length_buckets = groups
        opt.zero_grad()
        model.calculate_loss(batch).backward()
        opt.step()

    gfn = gflowgr_step(config, model, train_data, n_batches)

    def gfn_step(batch):
        model.length_buckets = buckets  # as SFT (ours): per history-length group
        gfn(batch)
    return sft_step, gfn_step


def with_keys(config, model, train_data, keys):
    """A TIGER built with the config ``keys`` (e.g. ``{"fast_dropout": True}``) on, with ``model``'s weights."""
    old = {key: config[key] for key in keys}
    try:
        for key, value in keys.items():
            config[key] = value
        torch.manual_seed(0)
        other = get_model("TIGER")(config, train_data._dataset)
    finally:
        for key, value in old.items():
            config[key] = value
    other.load_state_dict(model.state_dict(), strict=False)  # gflow_heads: built by each one's trainer
    return other


def compile_check(config, model, train_data, batch):
    """(seconds to compile, |loss - eager loss|) of ``compile: True`` on ``batch``, eval mode (no dropout: the two
    random streams differ), forward and backward."""
    other = with_keys(config, model, train_data, {"compile": True})
    losses = []
    for m in (model, other):
        m.eval()
        start = time.perf_counter()
        loss = m.calculate_loss(batch)
        loss.backward()
        losses.append((float(loss), time.perf_counter() - start))
        m.zero_grad()
        m.train()
    return losses[1][1], abs(losses[0][0] - losses[1][0])


def measure(dataset, files, args, peak):
    """Per-dataset lines of the default run (see the module docstring)."""
    config, model, train_data, batches = build(dataset, files, args.n_aug, args.batches)
    n_seq = sum(len(b) for b in batches[1:]) / (len(batches) - 1)
    print(f"\n{dataset}: TIGER {'+'.join(f[:-5] for f in files)}, "
          f"{sum(p.numel() for p in model.t5.parameters()) / 1e6:.2f}M parameters, batch {len(batches[0])}, "
          f"MAX_ITEM_LIST_LENGTH {config['MAX_ITEM_LIST_LENGTH']}, mean history "
          f"{float(batches[1][model.ITEM_SEQ_LEN].float().mean()):.1f} items of {model.code_len} tokens")
    variants = {"fast_dropout": {"fast_dropout": True}} if args.fast_dropout else {}
    if args.compile:
        variants["compile"] = {"compile": True}
    others = {name: with_keys(config, model, train_data, keys) for name, keys in variants.items()}
    sft_step, gfn_step = steps(config, model, train_data, len(batches))
    timed = {"sft": sft_step, "sft-longest": lambda b: sft_step(b, 1), "gfn": gfn_step}
    warm = {}
    for name, other in others.items():
        timed[f"sft {name}"], timed[f"gfn {name}"] = steps(config, other, train_data, len(batches))
        for kind in ("sft", "gfn"):  # the first steps compile (compile: True): timed apart
            start = time.perf_counter()
            timed[f"{kind} {name}"](batches[0])
            warm[f"{kind} {name}"] = time.perf_counter() - start
    t = time_interleaved(timed, batches)
    model.length_buckets = config["length_buckets"]
    with FlopCounterMode(display=False) as counter:
        sft_step(batches[1])
    counted = counter.get_total_flops()
    theory = [step_flops(model, b, args.n_aug) for b in batches[1:]]
    sft_flops, gfn_flops = (sum(x) for x in zip(*theory))
    print(f"SFT step: {t['sft']:.3f} s/batch (ours, {config['length_buckets']} length groups) vs {t['sft-longest']:.3f} "
          f"padded to the batch's longest (previous way): {t['sft-longest'] / t['sft']:.2f}x; GFlowGR-TB "
          f"(N={args.n_aug}): {t['gfn']:.3f} s/batch")
    useful = theory[0][0]  # analytic FLOPs of the step on batch 1 (true lengths, attention included)
    print(f"SFT FLOPs of batch 1: analytic {useful / 1e9:.2f} G (true lengths); FlopCounterMode {counted / 1e9:.2f} G "
          "(the matmuls run, padding of each length group included)")
    for name in [""] + list(others):  # the default keys, then each variant: its lines end with (<keys> on)
        sft, gfn, tag = t[f"sft {name}".strip()], t[f"gfn {name}".strip()], f" ({name} on)" if name else ""
        sft_rate = sft_flops / (sft * len(theory))
        print(f"SFT sequences/s {dataset}{tag}: {n_seq / sft:.0f}")
        print(f"SFT FLOP share {dataset}{tag}: {sft_rate / peak:.0%} ({sft_rate / 1e9:.1f} G/s analytic model FLOPs "
              f"of {peak / 1e9:.1f} G/s dense matmul)")
        print(f"ratio gflowgr-tb/sft {dataset}{tag}: {gfn / sft:.2f}x")
        if name:
            print(f"{name} vs default keys {dataset} (same batches, in turn): SFT {t['sft'] / sft:.2f}x, GFlowGR-TB "
                  f"{t['gfn'] / gfn:.2f}x faster; first steps (compilation) SFT {warm['sft ' + name]:.1f} s, "
                  f"GFlowGR-TB {warm['gfn ' + name]:.1f} s")
    print(f"theoretical gflowgr-tb/sft {dataset}: {gfn_flops / sft_flops:.2f}x")
    if args.compile:
        seconds, diff = compile_check(config, model, train_data, batches[1])
        print(f"compile exactness {dataset}: |loss - eager| = {diff:.2e} (eval mode, batch 1; compiling it: {seconds:.1f} s)")
    if args.profile:  # where the steps' time goes (torch.profiler, self CPU time per op)
        from torch.profiler import ProfilerActivity, profile

        for name in ["sft", "gfn"] + [f"{kind} {name}" for name in others for kind in ("sft", "gfn")]:
            step = timed[name]
            name = name.replace("sft", "SFT").replace("gfn", "GFlowGR-TB")
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in batches[1:]:
                    step(batch)
            print(f"{name} step profile {dataset}:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default=None, help="one dataset, detailed comparison (default: the summary of "
                                                        "industrial-scientific, ml-100k and amazon-beauty)")
    parser.add_argument("--only", default=None, help="summary mode: only these datasets (comma-separated)")
    parser.add_argument("--size", default="paper", choices=["paper", "small"])
    parser.add_argument("--batches", type=int, default=None, help="timed batches (default 4; 10 with --dataset)")
    parser.add_argument("--n_aug", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--fast_dropout", type=int, default=1, help="summary mode: also time fast_dropout: True on the "
                                                                    "same batches (default 1; 0 = off)")
    parser.add_argument("--compile", action="store_true", help="summary mode: also time compile: True (inductor; "
                                                               "compiles for minutes) and check its loss")
    parser.add_argument("--profile", type=int, default=0, help="summary mode: print the top N ops of the SFT and the "
                                                               "GFlowGR-TB step (torch.profiler) per dataset")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tiger.fetch_semantic_ids = random_ids
    if args.dataset:
        args.batches = args.batches or 10
        return detailed(args)
    args.batches = args.batches or 4
    from recbole_gflowgr.data.registry import get_dataset_spec

    peak = matmul_flops()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, dense 1024^3 matmul {peak / 1e9:.1f} G FLOP/s")
    for dataset, files in DATASETS:
        if args.only and dataset not in args.only.split(","):
            continue
        spec = get_dataset_spec(dataset)
        if spec is not None and not os.path.isdir(spec.default_source):
            print(f"\n{dataset}: skipped (no data at {spec.default_source})")
            continue
        measure(dataset, files, args, peak)


def detailed(args):
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

    gfn_step = gflowgr_step(config, model, train_data, len(batches))
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
