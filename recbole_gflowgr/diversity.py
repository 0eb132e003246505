"""Diversity analysis (GFlowGR paper §4.5): SFT vs GFlowGR top-K lists on the test users.

    python -m recbole_gflowgr.diversity --dataset=industrial-scientific --model=TIGER --methods=sft,gflowgr-tb
                                        [--seed=42] [--results_dir=results] [--out=results/diversity] [--k=10]
    python -m recbole_gflowgr.diversity --checkpoints=saved/a.pth,saved/b.pth   # any RecBole checkpoints of ours

Per model (a checkpoint of a run; with --methods, that of the newest row of each method with that seed):

* generation probabilities ``p = exp(log P(item ID | history))`` of the K generated items of every test user, pooled:
  their std, and ``KL(P_hist || N)`` — the pooled values in 50 equal-width bins against a normal distribution with
  the same mean and std, discretised on the same bins (lower: a smoother, less peaked generation distribution);
* the collaborative model's normalised score (in [0, 1] per user, see model/collaborative.py) of the recommended items:
  mean, range (max − min) and std;
* RecBole's own ItemCoverage, AveragePopularity, GiniIndex and TailPercentage (``tail_ratio`` 0.1) @K, and the
  accuracy metrics, from RecBole's evaluator on the same lists;
* a PNG histogram of the pooled generation probabilities of all models.

Writes ``<out>/<dataset>-<model>-seed<seed>.{json,md,png}``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from recbole_gflowgr.analysis import pyplot, save_figure
from recbole_gflowgr.foundation.errors import ConfigError, cli
from recbole_gflowgr.trainer.results import read_rows

DIVERSITY_METRICS = ["ItemCoverage", "AveragePopularity", "GiniIndex", "TailPercentage"]


def kl_to_normal(values, bins=50):
    """KL(histogram of ``values`` || normal with their mean and std, on the same bins); 0 for constant values."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std()
    if values.size < 2 or std == 0:
        return 0.0
    from scipy.stats import norm

    counts, edges = np.histogram(values, bins=bins)
    p = counts / counts.sum()
    q = np.diff(norm.cdf(edges, loc=values.mean(), scale=std))
    q = q / q.sum()
    eps = 1e-12
    return float(np.sum(p * (np.log(p + eps) - np.log(q + eps))))


def load_run(path, k):
    """(config, model, train_data, test_data) of a RecBole checkpoint of a TIGER/LETTER run, rebuilt from its
    config; fine-tuning heads in the checkpoint are ignored."""
    from recbole_gflowgr.quick_start import rebuild_run
    from recbole_gflowgr.registry import OUR_MODELS

    def adjust(config):
        if config["model"] not in OUR_MODELS:
            raise ConfigError(f"checkpoint {path} is a {config['model']} model; the analysis needs TIGER or LETTER")
        config["metrics"] = list(dict.fromkeys(list(config["metrics"]) + DIVERSITY_METRICS))
        config["topk"] = sorted(set(config["topk"]) | {k})
        config["tail_ratio"] = config["tail_ratio"] or 0.1

    config, model, _, (train_data, _, test_data) = rebuild_run(path, f"checkpoint {path}", adjust)
    return config, model, train_data, test_data


@torch.no_grad()
def analyse(path, k=10, scorer=None):
    """The statistics of one checkpoint, plus the pooled generation probabilities under ``"probs"``."""
    from recbole_gflowgr.data import dataset_settings
    from recbole_gflowgr.quick_start import load_scorer
    from recbole_gflowgr.registry import get_trainer

    config, model, train_data, test_data = load_run(path, k)
    if scorer is None:
        scorer = load_scorer(config["dataset"], dataset_settings(config), config_dict=config["collaborative_args"],
                             recbole_dataset=train_data._dataset)
    probs, cm, users = [], [], 0
    beam_search = model.beam_search

    def recording_beam_search(interaction, beam_size=None):  # RecBole's evaluation runs the beam once per batch
        nonlocal users
        items, scores = beam_search(interaction, beam_size)  # (B, beams) RecBole ids, log-probs, best first
        top, top_scores = items[:, :k], scores[:, :k]  # (B, K)
        valid = top > 0
        users += len(top)
        probs.append(top_scores.exp()[valid])
        cm.append(scorer.score(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], top)[valid])  # CM (B,K)
        return items, scores

    trainer = get_trainer(config["MODEL_TYPE"], config["model"], config)(config, model)
    trainer.eval_collector.data_collect(train_data)  # item counts for the popularity metrics
    model.beam_search = recording_beam_search
    try:
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    finally:
        del model.beam_search
    probs, cm = torch.cat(probs).numpy(), torch.cat(cm).numpy()
    suffix = f"@{k}"
    stats = {"checkpoint": path, "model": config["model"], "finetune": config["finetune"], "seed": config["seed"],
             "variant": config["experiment_variant"] or "",  # a grid variant's run (e.g. beauty-cpu's control)
             "dataset": config["dataset"], "k": k, "n_lists": users,
             "gen_prob_std": float(probs.std()), "gen_prob_mean": float(probs.mean()),
             "kl_to_normal": kl_to_normal(probs), "cm_mean": float(cm.mean()),
             "cm_range": float(cm.max() - cm.min()), "cm_std": float(cm.std())}
    stats.update({name.lower(): float(v) for name, v in result.items() if name.endswith(suffix)})
    stats["probs"] = probs
    return stats


def checkpoints_from_rows(results_dir, dataset, model, methods, seed):
    """{method: checkpoint} of the newest row of each method (that has an existing checkpoint), the method as it is:
    rows of a grid variant (an ablation, a sweep value) are not the method."""
    found = {}
    for row in read_rows(results_dir):
        if (row.get("dataset"), row.get("model"), row.get("seed")) == (dataset, model, seed) \
                and row.get("finetune") in methods and not row.get("experiment_variant") \
                and row.get("checkpoint") and os.path.isfile(row["checkpoint"]):
            found[row["finetune"]] = row["checkpoint"]
    missing = [m for m in methods if m not in found]
    if missing:
        raise ConfigError(f"no row with an existing checkpoint in {results_dir}/ for {dataset} {model} seed {seed} "
                          f"method(s) {missing}; run them first (e.g. python -m recbole_gflowgr.experiments)")
    return [found[m] for m in methods]


def label(stats):
    """The method of a checkpoint's statistics, with its grid variant in brackets if it has one."""
    return f"{stats['finetune']} [{stats['variant']}]" if stats.get("variant") else stats["finetune"]


def report(all_stats, out_dir, name):
    """Writes <name>.json, <name>.md and <name>.png under ``out_dir``; returns the markdown table."""
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    keys = [k for k in all_stats[0] if k not in ("probs", "checkpoint", "model", "dataset", "k", "seed", "finetune",
                                                 "variant", "wall_s", "device", "commit")]
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {label(s)} | " + " | ".join(str(s[k]) if isinstance(s[k], int) else f"{s[k]:.4g}" for k in keys)
              + " |" for s in all_stats]  # counts (n_lists) in full, e.g. 22363 users, not 2.236e+04
    fig, ax = plt.subplots(figsize=(5, 3.2))
    top = max(float(s["probs"].max()) for s in all_stats)
    for s in all_stats:
        ax.hist(s["probs"], bins=50, range=(0, top), alpha=0.5, label=f"{s['model']} {label(s)}")
    ax.set_xlabel(f"generation probability of the top-{all_stats[0]['k']} items")
    ax.set_ylabel("count (log scale)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(out_dir, f"{name}.png"))
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump([{k: v for k, v in s.items() if k != "probs"} for s in all_stats], f, indent=1)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default="", help="comma-separated checkpoints (instead of rows)")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--model", default="TIGER")
    parser.add_argument("--methods", default="sft,gflowgr-tb")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--out", default=None, help="output folder (default: <results_dir>/diversity)")
    args = parser.parse_args(argv)
    if args.checkpoints:
        paths = [p for p in args.checkpoints.split(",") if p]
    elif args.dataset:
        paths = checkpoints_from_rows(args.results_dir, args.dataset, args.model,
                                      [m for m in args.methods.split(",") if m], args.seed)
    else:
        raise ConfigError("give --dataset (with --model/--methods/--seed) or --checkpoints")
    from recbole_gflowgr.trainer.results import device_name, git_commit

    commit, all_stats = git_commit(), []
    for path in paths:
        start = time.time()
        all_stats.append(analyse(path, args.k))
        all_stats[-1].update(wall_s=round(time.time() - start, 1), device=device_name("cpu"), commit=commit)
    name = f"{all_stats[0]['dataset']}-{all_stats[0]['model']}-seed{all_stats[0]['seed']}"
    print(report(all_stats, args.out or os.path.join(args.results_dir, "diversity"), name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
