"""What GFlowGR's flow loss is trained towards, against what SFT already does (a diagnostic of §3.2).

A GFlowNet trained to zero trajectory-balance loss (with a per-history log Z) samples each item ``x`` of the
catalogue with ``P_F(x | h) = R(x) / Z(h)``, ``Z(h) = sum_x R(x)`` over every valid semantic ID. With GFlowGR's
``R = (R_aug + R_cm + R_tok) ** beta`` every item gets ``R_cm`` (the collaborative model's min-max score, around
the middle of [0, 1] for most items), so the target's share of the observed next item is ``R(pos) / Z``. This
command computes, on training sequences (those the flow loss sees) from the SFT checkpoint that fine-tuning starts
from: the target's probability of the positive, the SFT policy's own probability of it, how often the target is
below the SFT policy (TB then pulls the positive down), and ``log Z*`` (the value the log Z head should learn).

    python -m recbole_gflowgr.flow_target --model=TIGER --dataset=industrial-scientific \\
        --config_files=properties/small.yaml [--exponents=1,2,4] [--batches=20] [--checkpoint=saved/sft/...pth]
        [--out=results/diagnostics/flow-target.json] [any --key=value config key]

The checkpoint defaults to the cached SFT checkpoint of that config (the one fine-tuning would start from); it
must exist. Prints one markdown line per reward exponent ``beta``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch

from recbole_gflowgr.finetune.common import ensure_scorer, policy_and_reference, reward_terms
from recbole_gflowgr.foundation.errors import ConfigError, cli

HEAD = ["beta", "target P(pos) mean", "median", "SFT P_F(pos) mean", "median", "target < SFT", "mean log ratio",
        "log Z* mean"]


def target_log_share(log_reward, is_positive):
    """(B,) log of the reward-proportional distribution's probability of the positive: ``log R(pos) - log sum_x R(x)``
    from ``log_reward`` (B, n) over the whole catalogue and ``is_positive`` (B, n) bool with one True per row; and
    (B,) ``log Z* = logsumexp_x log R(x)``."""
    if not bool((is_positive.sum(1) == 1).all()):
        raise ValueError("target_log_share: every row needs exactly one positive item")
    log_z = torch.logsumexp(log_reward, dim=1)  # (B,)
    log_pos = log_reward.masked_select(is_positive)  # (B,) one per row
    return log_pos - log_z, log_z


def summarise(beta, log_target, log_sft, log_z):
    """One result dict from (N,) log target shares, (N,) SFT log-probabilities of the positives and (N,) log Z*."""
    target, sft = log_target.exp(), log_sft.exp()
    return {"beta": beta, "target_mean": target.mean().item(), "target_median": target.median().item(),
            "sft_mean": sft.mean().item(), "sft_median": sft.median().item(),
            "target_below_sft": (log_target < log_sft).float().mean().item(),
            "mean_log_ratio": (log_target - log_sft).mean().item(), "log_z_mean": log_z.mean().item(),
            "n": int(log_target.numel())}


def markdown(results):
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for r in results:
        lines.append(f"| {r['beta']:g} | {r['target_mean']:.4f} | {r['target_median']:.4f} | {r['sft_mean']:.4f} | "
                     f"{r['sft_median']:.4f} | {r['target_below_sft']:.0%} | {r['mean_log_ratio']:+.2f} | "
                     f"{r['log_z_mean']:.2f} |")
    return "\n".join(lines)


@torch.no_grad()
def measure(model, scorer, train_data, config, exponents, batches):
    """[summary dict per exponent] over the first ``batches`` training batches (all with 0)."""
    items = torch.arange(1, model.n_items, device=model.item_tokens.device)  # (n,) every real item
    codes = model.target_tokens(items)  # (n, L)
    logs = {b: ([], [], []) for b in exponents}
    model.eval()
    for i, interaction in enumerate(train_data):
        if batches and i >= batches:
            break
        interaction = interaction.to(model.item_tokens.device)
        pos = interaction[model.POS_ITEM_ID]  # (B,)
        log_sft = policy_and_reference(model, None, interaction, pos.unsqueeze(1))[0][:, 0]  # (B,)
        cm = scorer.score(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], pos=pos)[:, 1:]  # (B, n)
        is_pos = items.unsqueeze(0) == pos.unsqueeze(1)  # (B, n)
        all_codes = codes.unsqueeze(0).expand(pos.shape[0], -1, -1)  # (B, n, L)
        pos_codes = model.target_tokens(pos)  # (B, L)
        for beta in exponents:
            _, log_r, _ = reward_terms({**config, "gflowgr_reward_exponent": beta}, model, is_pos, cm, all_codes,
                                       pos_codes)  # (B, n)
            log_share, log_z = target_log_share(log_r, is_pos)
            for store, value in zip(logs[beta], (log_share, log_sft, log_z)):
                store.append(value.float().cpu())
    return [summarise(b, *(torch.cat(v) for v in logs[b])) for b in exponents]


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="TIGER or LETTER")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config_files", default=None, help="yaml files, separated by spaces or commas")
    parser.add_argument("--exponents", default="1,2,4", help="reward exponents beta, comma-separated")
    parser.add_argument("--batches", type=int, default=20, help="training batches to measure (0 = all)")
    parser.add_argument("--checkpoint", default=None, help="SFT checkpoint (default: the cached one of the config)")
    parser.add_argument("--out", default=None, help="also write the results (and the run's facts) as json here")
    args, rest = parser.parse_known_args(argv)
    start = time.time()
    try:
        exponents = [float(x) for x in args.exponents.split(",") if x]
    except ValueError:
        raise ConfigError(f"--exponents={args.exponents}: give numbers > 0 separated by commas, e.g. 1,2,4") from None
    if not exponents or min(exponents) <= 0:
        raise ConfigError(f"--exponents={args.exponents}: give numbers > 0 separated by commas, e.g. 1,2,4")
    if args.batches < 0:
        raise ConfigError(f"--batches={args.batches}: give a number of training batches >= 1, or 0 for all")
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        raise ConfigError(f"unrecognised argument(s) {' '.join(bad)}: config keys are given as --key=value")
    results, facts = run(args, exponents, rest)
    facts["wall_s"] = round(time.time() - start, 1)
    print(markdown(results))
    print(" ".join(f"{k}={v}" for k, v in facts.items()))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"results": results, **facts}, f, indent=1)
    return 0


def run(args, exponents, rest):
    from recbole.utils import init_seed

    from recbole_gflowgr.quick_start import (build_model, load_config, load_pretrained, load_scorer, prepare_data,
                                             sft_cache_path)
    from recbole_gflowgr.trainer.results import git_commit

    files = args.config_files.replace(",", " ").split() if args.config_files else None
    cmd_args = [a for a in rest if not a.startswith("--finetune=")] + ["--finetune=gflowgr-tb"]
    config = load_config(args.model, args.dataset, files, None, cmd_args)
    checkpoint = args.checkpoint or sft_cache_path(config)  # the hash leaves the fine-tuning keys out
    if not os.path.isfile(checkpoint):
        raise ConfigError(f"no SFT checkpoint at {checkpoint}: train it first (python run_recbole_gflowgr.py "
                          f"--model={args.model} --dataset={args.dataset} ...) or give --checkpoint")
    init_seed(config["seed"], config["reproducibility"])
    dataset, (train_data, _, _) = prepare_data(config)
    model = build_model(config, train_data._dataset).to(config["device"])
    load_pretrained(model, checkpoint, config)
    holder = SimpleNamespace(config=config, model=model, device=config["device"], scorer_loader=load_scorer)
    scorer = ensure_scorer(holder, train_data)  # the trainers' loader: cm mode and item-count checks included
    results = measure(model, scorer, train_data, config.final_config_dict, exponents, args.batches)
    facts = {"model": args.model, "dataset": args.dataset, "checkpoint": checkpoint, "seed": config["seed"],
             "batches": args.batches, "device": str(config["device"]), "commit": git_commit(),
             "cm_score": config["gflowgr_cm_score"], "n_items": model.n_items - 1}
    if not math.isfinite(results[0]["log_z_mean"]):
        raise ConfigError("the rewards are not finite: check gflowgr_reward_* keys")
    return results, facts


if __name__ == "__main__":
    sys.exit(main())
