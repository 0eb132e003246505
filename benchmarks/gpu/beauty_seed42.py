"""amazon-beauty, paper-size TIGER, seed 42, in one call of under 10 minutes on one GPU: the SFT cell of
properties/experiments/beauty-gpu.yaml within ``time_budget_s``, then its two fine-tuning cells (the control
``sft-continued`` and GFlowGR-TB) at once on the same GPU within ``finetune_time_budget_s`` (what is left of the
call), then results/ (rows and logs) packed into $OUT/results.tar.gz for benchmarks/gpu/merge.py. The cells run
through the grid runner (``recbole_gflowgr.experiments.run_grid``: the same ``run_recbole_gflowgr.py`` commands as
any grid); the collaborative SASRec that GFlowGR-TB rewards with trains beside the SFT cell when it was not carried.

Start it with benchmarks/gpu/beauty_seed42.sh (installs the carried wheels, puts .carry in place):
    bash benchmarks/gpu/beauty_seed42.sh            # on the device machine
    DRY=1 bash benchmarks/gpu/beauty_seed42.sh      # the plan and the time estimate only (anywhere)
    TINY=1 bash benchmarks/gpu/beauty_seed42.sh     # the mechanics on CPU: a synthetic 300-user dataset at small
                                                    # + demo sizes, 60 s stages, everything in a scratch folder
It has never run on a GPU: the per-epoch costs of the estimate are assumptions (ASSUMED) until GPU rows of the same
cells are in results/ (their mean ``epoch_s`` is used then).
"""
import argparse
import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from recbole_gflowgr.experiments import device_kind, load_grid, run_grid  # noqa: E402
from recbole_gflowgr.trainer import budget  # noqa: E402
from recbole_gflowgr.trainer.results import read_rows  # noqa: E402

GRID = os.path.join(REPO, "properties", "experiments", "beauty-gpu.yaml")
FINETUNES = ("sft-continued", "gflowgr-tb")
# Assumed seconds (NEVER MEASURED) on one H200 for paper-size TIGER on amazon-beauty in float32: 601
# training batches of 256 histories per epoch (each split into 4 length groups), 22,363 users per validation (beam
# 20, 1024 users per batch); GFlowGR-TB decodes 1 + 4 targets per history and scores the CM (on CPU it took 1.8-2.4x
# the control's epoch, results/industrial-scientific.jsonl); setup = imports, RecBole's dataset, model, trie.
ASSUMED = {"setup": 45, "valid": 30, "sft": 30, "sft-continued": 30, "gflowgr-tb": 75}
SHARED = 1.5  # assumed slowdown of each of two cells sharing the GPU
# TINY=1 (CPU, 1 thread per cell): a synthetic 300-user catalogue (tiny_dataset) at small.yaml + demo.yaml sizes;
# epochs as measured by one TINY run on 2 busy cores (the fine-tuning cells two at once), setup assumed
ASSUMED_TINY = {"setup": 30, "valid": 2, "sft": 7, "sft-continued": 13, "gflowgr-tb": 29}
TINY_DATASET = "gpu-tiny"
TOTAL_S, SFT_S, TINY_STAGE_S = 570, 240, 60  # the call (9.5 min from the .sh's start), the SFT cell, TINY stages
PACK_S = 20  # packing results/ and a margin before the end of the call
# assumed seconds of each cell outside its budget's clock: starting Python and the imports before quick_start.run,
# the export and the row after the test evaluation (TINY on 2 busy cores: 9-31 s, the rows' wall_s over 60 s)
OUTSIDE_S = 25


def simulate(setup_s, epoch_s, valid_s, budget_s, cap):
    """(epochs, seconds) of one cell under trainer/budget.py's rule: after each validation, stop when the next epoch,
    its validation and the test evaluation would overrun ``budget_s`` (the first epoch always runs)."""
    elapsed, epochs = setup_s, 0
    while True:
        elapsed, epochs = elapsed + epoch_s + valid_s, epochs + 1
        if epochs >= cap or budget.overruns(elapsed, epoch_s, valid_s, 1, budget_s):
            return epochs, elapsed + valid_s


def tiny_dataset(folder, n_users=300, n_items=200, genres=5, seed=0):
    """A synthetic catalogue in LETTER's json format (``<folder>/gpu-tiny.{inter,item}.json``): every user mostly
    follows one genre (so that the models and the collaborative SASRec have something to learn), 6-12 items each."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    genre = np.arange(n_items) % genres
    inter = {}
    for user in range(n_users):
        pool = np.flatnonzero(genre == rng.integers(genres)) if rng.random() < 0.8 else np.arange(n_items)
        inter[str(user)] = [int(i) for i in rng.choice(pool, int(rng.integers(6, 13)), replace=False)]
    items = {str(i): {"title": f"item {i}", "categories": f"genre {genre[i]}"} for i in range(n_items)}
    os.makedirs(folder, exist_ok=True)
    for kind, value in (("inter", inter), ("item", items)):
        with open(os.path.join(folder, f"{TINY_DATASET}.{kind}.json"), "w") as f:
            json.dump(value, f)
    return folder


def make_grid(tiny, work):
    """The grid of the run: beauty-gpu.yaml, or for TINY=1 the same cells on :func:`tiny_dataset` at small + demo
    sizes with early stopping out of the way (the budget ends the stages), everything they write under ``work``."""
    grid = load_grid(GRID)
    if tiny:
        saved, results = os.path.join(work, "saved"), os.path.join(work, "results")
        grid.update(name="beauty-gpu-tiny", datasets=[TINY_DATASET],
                    config_files=["properties/small.yaml", "properties/demo.yaml"],
                    config={"epochs": 50, "finetune_epochs": 20, "stopping_step": 50, "checkpoint_dir": saved,
                            "source_path": os.path.join(work, "data"), "data_path": os.path.join(work, "dataset"),
                            "tokenizer_args": {"num_emb_list": [16, 16, 16]},
                            "collaborative_args": {"epochs": 2, "checkpoint_dir": saved, "results_dir": results}})
    return grid


def costs(grid, rows, tiny):
    """{"setup", "valid", <finetune>: epoch seconds} and where each epoch cost came from: the mean ``epoch_s`` of
    earlier rows of the grid's cells on this kind of device (of a cell alone on the GPU: the fine-tuning cells ran
    two at once, SHARED), else the assumption."""
    table, source = dict(ASSUMED_TINY if tiny else ASSUMED), {}
    kind = "cpu" if tiny else "gpu"
    for finetune in ("sft",) + FINETUNES:
        seen = [r["epoch_s"] for r in rows if r.get("experiment") == grid["name"] and r.get("finetune") == finetune
                and r.get("epoch_s") and device_kind(r.get("device", "cpu")) == kind]
        if seen:
            table[finetune] = sum(seen) / len(seen) / (SHARED if finetune in FINETUNES and not tiny else 1.0)
        source[finetune] = f"measured ({len(seen)} rows)" if seen else "assumed"
    return table, source


def plan(table, source, tiny, spent_s=0.0, total_s=TOTAL_S, sft_s=SFT_S):
    """(lines to print, {stage: budget seconds}, expected end in seconds from the start of the call)."""
    cap_sft, cap_ft = (50, 20) if tiny else (200, 10)  # epochs, finetune_epochs
    share = 1.0 if tiny else SHARED
    sft_budget = TINY_STAGE_S if tiny else sft_s
    n, sft_end = simulate(table["setup"], table["sft"], table["valid"], sft_budget, cap_sft)
    ft_start = spent_s + sft_end + OUTSIDE_S
    ft_budget = TINY_STAGE_S if tiny else max(0, int(total_s - ft_start - PACK_S - OUTSIDE_S))
    lines = [f"time estimate ({'TINY=1: CPU mechanics check' if tiny else 'one H200-class GPU'}; costs per epoch in s, "
             "'assumed' = never measured):",
             f"  setup per cell {table['setup']:.0f} s in its budget + {OUTSIDE_S} s outside it, one validation (= the "
             f"test evaluation) {table['valid']:.0f} s"
             + ("" if tiny else f", {share}x each while two cells share the GPU")]
    lines += [f"  {f:14s} epoch {table[f]:6.1f} s  {source[f]}" for f in ("sft",) + FINETUNES]
    lines.append(f"  0. {spent_s:4.0f} s  spent before the plan (wheels, carried caches, imports)")
    lines.append(f"  1. SFT, time_budget_s={sft_budget:.0f}: ~{n} epoch(s), ends at ~{ft_start:.0f} s")
    end = ft_start
    for f in FINETUNES:
        k, took = simulate(table["setup"] * share, table[f] * share, table["valid"] * share, ft_budget, cap_ft)
        end = max(end, ft_start + took + OUTSIDE_S)
        lines.append(f"  2. {f}, finetune_time_budget_s={ft_budget:.0f} (what is left; set when SFT ends): "
                     f"~{k} epoch(s), ends at ~{ft_start + took + OUTSIDE_S:.0f} s")
    lines.append(f"  3. pack results/ into $OUT/results.tar.gz; expected end ~{end + 5:.0f} s"
                 + ("" if tiny else f" of the {total_s} s planned (the call's limit: 600 s)"))
    return lines, {"sft": sft_budget, "finetune": ft_budget}, end + 5


def check_caches(grid, tiny, fatal):
    """What the device cannot make itself (no internet, no text encoder): the converted dataset and its IDs."""
    if tiny:
        return []
    problems = []
    for dataset in grid["datasets"]:
        if not os.path.isfile(os.path.join("dataset", dataset, "manifest.json")) or \
                not glob.glob(os.path.join("dataset", dataset, "tokenizer", "rqvae-*")):
            problems.append(f"dataset/{dataset} or its RQ-VAE IDs are missing: bundle them here first "
                            f"(bash benchmarks/gpu/bundle.sh {dataset}) and carry .carry")
        if not glob.glob(os.path.join("saved", "collaborative", f"{dataset}-SASRec-*.pth")):
            problems.append(f"note: no cached collaborative SASRec of {dataset}: it trains beside the SFT cell")
    if fatal and any(not p.startswith("note:") for p in problems):
        print("error: " + problems[0], file=sys.stderr)
        sys.exit(2)
    return problems


def prepare(tiny, work, ids=True):
    """What the cells need besides training, as they would make it: the converted dataset and its semantic IDs
    (``ids``) and the collaborative SASRec that GFlowGR-TB rewards with (caches and locks: a cell waits for or finds
    them; what is cached returns at once). ``--prepare`` here (CPU), before bundle.sh; beside the SFT cell (the CM
    only) on the device."""
    from recbole_gflowgr.data import dataset_settings
    from recbole_gflowgr.quick_start import cm_checkpoint, load_config, prepare_caches

    grid = make_grid(tiny, work)
    files = [os.path.join(REPO, f) for f in grid["config_files"]]
    config = load_config("TIGER", grid["datasets"][0], files, dict(grid["config"]), ["--finetune=gflowgr-tb"])
    if ids:
        prepare_caches(config)
    print(cm_checkpoint(config["dataset"], dataset_settings(config), config_dict=config["collaborative_args"]))


def pack(results_dir, out):
    """``results_dir`` as results/ in ``out``/results.tar.gz (merge.py's layout); returns the archive's path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.tar.gz")
    with tarfile.open(path + ".tmp", "w:gz") as tar:
        tar.add(results_dir, arcname="results", filter=lambda t: None if t.name.endswith(".pid") else t)
    os.replace(path + ".tmp", path)
    return path


def summary(grid, results_dir):
    lines = []
    for r in read_rows(results_dir):
        if r.get("experiment") == grid["name"]:
            lines.append(f"  {r['finetune']:14s} epochs {r.get('epochs_trained')} stopped_by {r.get('stopped_by')} "
                         f"wall {r['wall_s']:.0f} s epoch {r.get('epoch_s')} s test ndcg@10 "
                         f"{r['test'].get('ndcg@10', float('nan')):.4f} ({r['device']})")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", default=os.environ.get("DRY") == "1",
                        help="print the plan and the estimate only (also DRY=1)")
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("TINY") == "1",
                        help="CPU mechanics check on a synthetic dataset (also TINY=1)")
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(tempfile.gettempdir(), "beauty-gpu-out"))
    parser.add_argument("--results_dir", default=None, help="default: results (TINY: a scratch folder)")
    parser.add_argument("--total_s", type=float, default=TOTAL_S, help="seconds of the call, from GPU_T0")
    parser.add_argument("--sft_s", type=float, default=SFT_S, help="time_budget_s of the SFT cell")
    parser.add_argument("--prepare", action="store_true", help="here, before bundle.sh: convert the dataset, compute "
                        "its RQ-VAE IDs and train the collaborative SASRec (CPU: hours for amazon-beauty's CM)")
    parser.add_argument("--cm_only", metavar="WORK", help=argparse.SUPPRESS)  # internal: the CM beside the SFT cell
    args = parser.parse_args(argv)
    if args.prepare or args.cm_only is not None:
        return prepare(args.tiny, args.cm_only or "scratch", ids=args.prepare)
    t0 = float(os.environ.get("GPU_T0") or time.time())
    work = tempfile.mkdtemp(prefix="beauty-gpu-tiny-") if args.tiny and not args.dry_run else "scratch"
    if args.tiny and not args.dry_run:
        tiny_dataset(os.path.join(work, "data"))
    results_dir = args.results_dir or (os.path.join(work, "results") if args.tiny else "results")
    grid = make_grid(args.tiny, work)
    table, source = costs(grid, read_rows(results_dir), args.tiny)
    lines, budgets, _ = plan(table, source, args.tiny, time.time() - t0, args.total_s, args.sft_s)
    print("\n".join(lines))
    for problem in check_caches(grid, args.tiny, fatal=not args.dry_run):
        print(("" if problem.startswith("note:") else "missing: ") + problem)
    if args.dry_run:
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("error: no GPU here: run TINY=1 for the CPU mechanics check, DRY=1 for the plan", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    print(f"results: {results_dir}; packed into {args.out}/results.tar.gz", flush=True)
    cm_log = open(os.path.join(args.out, "cm.log"), "w")
    cm = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--cm_only={work}"] + (["--tiny"] if args.tiny else []),
                          stdout=cm_log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    code, threads = 0, 1 if args.tiny else None  # TINY: one thread per cell (a shared CPU); GPU: cores // cells
    try:
        grid["config"]["time_budget_s"] = budgets["sft"]
        print(f"[{time.time() - t0:.0f} s] stage 1: SFT within {budgets['sft']:.0f} s", flush=True)
        report = run_grid(grid, results_dir, jobs=1, only=("sft",), threads=threads)
        pack(results_dir, args.out)  # the SFT row is safe even if stage 2 is cut off
        if report["failed"] or not report["ran"] + report["done"]:
            print("SFT failed: no fine-tuning (see the cell log)", flush=True)
            return 1
        spent = time.time() - t0
        left = budgets["finetune"] if args.tiny else int(args.total_s - spent - PACK_S - OUTSIDE_S)
        share = 1.0 if args.tiny else SHARED
        need = share * (table["setup"] + table["gflowgr-tb"] + 2 * table["valid"])
        if left < need and not args.tiny:
            print(f"[{spent:.0f} s] stage 2 not started: {left:.0f} s left, one GFlowGR-TB epoch needs ~{need:.0f} s")
            return 1
        grid["config"]["finetune_time_budget_s"] = left
        print(f"[{spent:.0f} s] stage 2: {' and '.join(FINETUNES)} at once within {left:.0f} s each", flush=True)
        report = run_grid(grid, results_dir, jobs=2, threads=threads)
        code = 1 if report["failed"] else 0
    finally:
        if cm.poll() is None:
            cm.terminate()
        cm_log.close()
        logs = glob.glob(os.path.join("log", "experiments", grid["name"], "*.log"))
        with tarfile.open(os.path.join(args.out, "cell-logs.tar.gz"), "w:gz") as tar:
            for log in logs:  # the runner's per-cell stdout (tracebacks of failed cells)
                tar.add(log, arcname=os.path.basename(log))
        pack(results_dir, args.out)
        print(f"[{time.time() - t0:.0f} s] packed {args.out}/results.tar.gz; merge here with: "
              "python benchmarks/gpu/merge.py <files_at>")
        print("\n".join(summary(grid, results_dir)), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
