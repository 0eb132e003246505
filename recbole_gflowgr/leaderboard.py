"""Leaderboard: result rows (results/*.jsonl) → the paper's Table 1 layout, as markdown and CSV.

    python -m recbole_gflowgr.leaderboard [--results_dir=results] [--out=RESULTS.md] [--csv=results/leaderboard.csv]
                                          [--grids properties/experiments/ablation.yaml ...]

One line per (dataset, model, fine-tuning method, config hash): test Recall@5/10 and NDCG@5/10 as mean ± std over
seeds, the seeds, mean wall time, device and commits. ``*`` marks a fine-tuning method whose metric beats the best
other method of the same backbone and dataset in a paired t-test over common seeds with p < 0.05 (needs >= 2 common
seeds); variant lines (e.g. a reduced budget) are shown but are neither rivals nor marked. ``†`` marks a fine-tuning
method that beats the control ``sft-continued`` (the same SFT checkpoint and fine-tuning budget, SFT loss only) of
the same backbone, dataset and variant in the same paired t-test: a gain that more training alone does not explain.
The seed paper's reported numbers (``PAPER``) are shown in separate, labelled lines.

Above that table, ``--out`` writes the section "Fine-tuning against its control": every fine-tuning row paired per
seed with the control of its own grid and SFT checkpoint (``pretrained``) and with that SFT run's row
(:func:`against_control`), the paired differences, their p-values and a plain verdict.

With ``--out``, each grid of ``--grids`` (default: GFlowGR-TB against its control on the converged base, the
ablation and the sweep, paper Table 2 and Fig. 3) gets a section of its own, from :mod:`recbole_gflowgr.analysis`
(missing cells shown as such), and its variant rows are left out of the main table.
"""
import argparse
import collections
import csv
import glob
import os
import sys

import numpy as np

from recbole_gflowgr.analysis import delta_vs_plain, paired_p, variant_table
from recbole_gflowgr.curves import PREFIX as CURVES
from recbole_gflowgr.finetune import CONTROL
from recbole_gflowgr.foundation.errors import cli
from recbole_gflowgr.trainer.results import METRIC_KEYS, read_rows


# GFlowGR paper (arXiv 2506.16114) Table 1, Beauty / Yelp, as quoted in this project's issues: R@5, R@10, N@5, N@10
PAPER = {
    ("amazon-beauty", "TIGER", "sft"): (.0354, .0558, .0234, .0299),
    ("amazon-beauty", "LETTER", "sft"): (.0344, .0540, .0227, .0290),
    ("amazon-beauty", "TIGER", "gflowgr-tb"): (.0407, .0651, .0266, .0344),
    ("amazon-beauty", "LETTER", "gflowgr-tb"): (.0417, .0632, .0276, .0345),
    ("yelp", "TIGER", "gflowgr-tb"): (.0256, .0404, .0166, .0213),
    ("amazon-beauty", "TIGER", "ppo"): (.0020, .0032, .0013, .0017),
    ("amazon-beauty", "TIGER", "grpo"): (.0347, .0543, .0229, .0291),
    ("amazon-beauty", "TIGER", "dpo"): (.0308, .0483, .0200, .0256),
    ("amazon-beauty", "TIGER", "s-dpo"): (.0314, .0492, .0208, .0265),
    ("amazon-beauty", "TIGER", "sprec"): (.0312, .0487, .0205, .0258),
    ("amazon-beauty", "TIGER", "ipa"): (.0306, .0481, .0198, .0245),
}
COLUMNS = ("R@5", "R@10", "N@5", "N@10")


def group_rows(rows):
    """{(dataset, model, finetune, config_hash): {seed: row}} (a later row of the same seed replaces an earlier)."""
    groups = collections.OrderedDict()
    for row in rows:
        if "finetune" not in row or "test" not in row:  # not a run row (e.g. results/tokenizer_stats.jsonl)
            continue
        key = (row["dataset"], row["model"], row["finetune"], row.get("config_hash", ""))
        groups.setdefault(key, {})[row["seed"]] = row
    return groups


def summarise(rows):
    """One dict per group: keys dataset, model, finetune, config_hash, seeds, mean/std per metric, marks, wall_s..."""
    groups = group_rows(rows)
    lines = []
    for (dataset, model, finetune, chash), by_seed in groups.items():
        seeds = sorted(by_seed)
        line = {"dataset": dataset, "model": model, "finetune": finetune, "config_hash": chash, "seeds": seeds,
                "wall_s": float(np.mean([by_seed[s]["wall_s"] for s in seeds])),
                "device": sorted({by_seed[s]["device"] for s in seeds}),
                "commit": sorted({by_seed[s]["commit"] for s in seeds}), "by_seed": by_seed, "mark": {},
                "control_mark": {},
                "variant": ", ".join(sorted({by_seed[s]["experiment_variant"] for s in seeds
                                             if by_seed[s].get("experiment_variant")}))}
        for metric in METRIC_KEYS:
            values = [by_seed[s]["test"].get(metric, np.nan) for s in seeds]
            line[metric] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        lines.append(line)
    for line in lines:  # significance against the best other method of the same backbone and dataset
        if line["finetune"] == "none" or line["variant"]:
            continue
        rivals = [o for o in lines if o is not line and o["finetune"] not in ("none", line["finetune"])
                  and not o["variant"] and (o["dataset"], o["model"]) == (line["dataset"], line["model"])]
        for metric in METRIC_KEYS:
            if not rivals:
                break
            best = max(rivals, key=lambda o: o[metric][0])
            common = [s for s in line["seeds"] if s in best["by_seed"]]
            p = paired_p([line["by_seed"][s]["test"][metric] for s in common],
                         [best["by_seed"][s]["test"][metric] for s in common])
            line["mark"][metric] = bool(p is not None and p < 0.05 and line[metric][0] > best[metric][0])
    for line in lines:  # significance against the control of the same backbone, dataset and variant
        if line["finetune"] in ("none", "sft", CONTROL):
            continue
        controls = [o for o in lines if o["finetune"] == CONTROL and o["variant"] == line["variant"]
                    and (o["dataset"], o["model"]) == (line["dataset"], line["model"])]
        if not controls:
            continue
        control = max(controls, key=lambda o: len(o["seeds"]))
        for metric in METRIC_KEYS:
            line["control_mark"][metric] = beats(line, control, metric)
    return lines


def beats(line, other, metric):
    """Whether ``line``'s mean of ``metric`` is above ``other``'s with a paired t-test p < 0.05 over common seeds."""
    common = [s for s in line["seeds"] if s in other["by_seed"]]
    p = paired_p([line["by_seed"][s]["test"][metric] for s in common],
                 [other["by_seed"][s]["test"][metric] for s in common])
    return bool(p is not None and p < 0.05 and line[metric][0] > other[metric][0])


def against_control(rows, metric="ndcg@10"):
    """One dict per (dataset, model, grid, variant, method) of fine-tuning rows that have a control: the paired
    differences of the test ``metric`` from the control ``sft-continued`` of the same grid, seed and SFT checkpoint
    (``pretrained``), and from that SFT run's own row (the row whose ``sft_cache`` is that checkpoint). A grid without
    a control row of its own (the sweep's control cell is table1's) takes the control of the same checkpoint and seed
    whose config has this row's control keys (the same fine-tuning budget), from any grid."""
    from recbole_gflowgr.rekey import run_hash

    rows = [r for r in rows if "finetune" in r and "test" in r]
    sft = {r["sft_cache"]: r for r in rows if r["finetune"] == "sft" and r.get("sft_cache")}

    controls, elsewhere = {}, {}  # {(dataset, model, grid, checkpoint, seed): {variant: control row}}; {(dataset,
    for r in rows:  # model, checkpoint, seed, hash of the control's keys): control row} (a later row replaces)
        if r["finetune"] == CONTROL and r.get("pretrained"):
            key = (r["dataset"], r["model"], r.get("experiment"), r["pretrained"], r["seed"])
            controls.setdefault(key, {})[r.get("experiment_variant") or ""] = r
            if r.get("config"):
                elsewhere[(r["dataset"], r["model"], r["pretrained"], r["seed"],
                           run_hash(r["config"], r["model"], CONTROL))] = r
    groups = collections.OrderedDict()
    for r in rows:
        if r["finetune"] in ("none", "sft", CONTROL) or not r.get("pretrained"):
            continue
        found = controls.get((r["dataset"], r["model"], r.get("experiment"), r["pretrained"], r["seed"]))
        if found:  # the control of the same variant (e.g. the same budget), else the grid's plain one, else any
            control = found.get(r.get("experiment_variant") or "") or found.get("") or next(iter(found.values()))
        elif r.get("config"):  # a grid that shares its control cell with another (the sweep's is table1's): the
            control = elsewhere.get((r["dataset"], r["model"], r["pretrained"], r["seed"],  # control run with
                                     run_hash(dict(r["config"], finetune=CONTROL), r["model"], CONTROL)))  # this
            # row's own control keys: the control the runner gives this row's cell
        else:
            control = None
        if control is None:
            continue
        key = (r["dataset"], r["model"], r.get("experiment") or "", r.get("experiment_variant") or "", r["finetune"],
               r.get("config_hash", ""))  # the hash leaves the seed out: one line per config (e.g. per SFT recipe)
        groups.setdefault(key, {})[r["seed"]] = (r, control, sft.get(r["pretrained"]))
    out = []
    for (dataset, model, grid, variant, finetune, _), by_seed in groups.items():
        seeds = sorted(by_seed)
        ours = [by_seed[s][0]["test"][metric] for s in seeds]
        ctrl = [by_seed[s][1]["test"][metric] for s in seeds]
        with_sft = [s for s in seeds if by_seed[s][2] is not None]
        p = paired_p(ours, ctrl)
        diff = float(np.mean(ours) - np.mean(ctrl))
        if len(seeds) < 2:
            verdict = f"{'above' if diff > 0 else 'below' if diff < 0 else 'equal to'} its control (1 seed: no test)"
        elif p is not None and p < 0.05:
            verdict = "**beats its control**" if diff > 0 else "**below its control**"
        else:
            verdict = "no significant difference from its control"
        out.append({"dataset": dataset, "model": model, "grid": grid, "variant": variant, "finetune": finetune,
                    "seeds": seeds, "metric": metric, "mean": float(np.mean(ours)), "control": float(np.mean(ctrl)),
                    "sft": float(np.mean([by_seed[s][2]["test"][metric] for s in with_sft])) if with_sft else None,
                    "vs_control": delta_vs_plain(list(zip(ours, ctrl))),
                    "vs_sft": delta_vs_plain([(by_seed[s][0]["test"][metric], by_seed[s][2]["test"][metric])
                                              for s in with_sft]),
                    "sft_converged": [bool(by_seed[s][2].get("stopped_early")) for s in with_sft],
                    "p": p, "verdict": verdict})
    return out


def control_markdown(items):
    """The against_control items as a markdown table (GFlowGR first)."""
    out = ["| dataset | backbone | method | grid | seeds | test N@10 | control | SFT | vs control | vs SFT "
           "| SFT early-stopped | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in sorted(items, key=lambda x: (x["dataset"], x["model"], x["grid"], not x["finetune"].startswith("gflowgr"),
                                          x["finetune"], x["variant"])):
        method = x["finetune"] + (f" [{x['variant']}]" if x["variant"] else "")
        stopped = ("yes" if all(x["sft_converged"]) else "no" if not any(x["sft_converged"]) else "some") \
            if x["sft_converged"] else "—"
        sft = f"{x['sft']:.4f}" if x["sft"] is not None else "—"
        out.append(f"| {x['dataset']} | {x['model']} | {method} | {x['grid']} | {','.join(map(str, x['seeds']))} | "
                   f"{x['mean']:.4f} | {x['control']:.4f} | {sft} | {x['vs_control']} | {x['vs_sft']} | {stopped} | "
                   f"{x['verdict']} |")
    return "\n".join(out)


def markdown(lines, paper=True):
    out = ["| dataset | model | method | " + " | ".join(COLUMNS) + " | seeds | wall s | device | commit |",
           "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|---|"]
    for line in sorted(lines, key=lambda x: (x["dataset"], x["model"], x["finetune"] != "none", x["finetune"])):
        cells = []
        for metric in METRIC_KEYS:
            mean, std = line[metric]
            cell = f"{mean:.4f} ± {std:.4f}" if len(line["seeds"]) > 1 else f"{mean:.4f}"
            cells.append(cell + ("*" if line["mark"].get(metric) else "") +
                         ("†" if line.get("control_mark", {}).get(metric) else ""))
        method = line["finetune"] + (f" [{line['variant']}]" if line.get("variant") else "")
        out.append(f"| {line['dataset']} | {line['model']} | {method} | " + " | ".join(cells) +
                   f" | {','.join(map(str, line['seeds']))} | {line['wall_s']:.0f} | {'; '.join(line['device'])} | "
                   f"{', '.join(line['commit'])} |")
    if paper:
        seen = {(x["dataset"], x["model"], x["finetune"]) for x in lines}
        for (dataset, model, finetune), values in PAPER.items():
            if dataset in {x["dataset"] for x in lines} or (dataset, model, finetune) in seen:
                out.append(f"| {dataset} | {model} | {finetune} (paper, reported) | " +
                           " | ".join(f"{v:.4f}" for v in values) + " | — | — | — | — |")
    return "\n".join(out)


def write_csv(lines, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "model", "finetune", "config_hash", "seeds"] +
                        [f"{m}_{s}" for m in METRIC_KEYS for s in ("mean", "std", "significant", "vs_control")] +
                        ["wall_s"])
        for line in lines:
            writer.writerow([line["dataset"], line["model"], line["finetune"], line["config_hash"],
                             " ".join(map(str, line["seeds"]))] +
                            [v for m in METRIC_KEYS for v in (*line[m], line["mark"].get(m, False),
                                                              line["control_mark"].get(m, ""))] +
                            [round(line["wall_s"], 1)])


DEFAULT_GRIDS = ("properties/experiments/tb-control-cpu.yaml", "properties/experiments/ablation.yaml",
                 "properties/experiments/sweep.yaml")


def grid_sections(paths, results_dir):
    """(markdown sections, names of their grids, names of those with a grid-level ``config``) for the grid files
    ``paths`` that exist: a grid with its own ``config`` (e.g. another SFT recipe) has no cell of the plain methods,
    so none of its rows belongs in the main table, not even those of its control (which re-keying labels plain)."""
    from recbole_gflowgr.experiments import load_grid
    from recbole_gflowgr.foundation.paths import REPO_ROOT

    sections, names, own = [], set(), set()
    for path in paths:
        full = path if os.path.isfile(path) else os.path.join(REPO_ROOT, path)  # here, else in the repo
        if not os.path.isfile(full):
            continue
        grid = load_grid(full)
        names.add(grid["name"])
        if grid["config"]:
            own.add(grid["name"])
        text = [f"## {grid.get('title') or 'Grid'} (grid `{grid['name']}`)", "",
                f"`python -m recbole_gflowgr.experiments --grid={path}`; test split, mean ± std over the seeds that "
                "have rows; a variant whose values are the defaults is the plain method's run.", "",
                variant_table(grid, results_dir, "test")]
        if grid["sweep"]:
            text += ["", "Validation split (what the plots show: `python -m recbole_gflowgr.analysis sweep "
                     f"--grid={path}`):", "", variant_table(grid, results_dir, "valid")]
            for key in grid["sweep"]:
                png = os.path.join(results_dir, "plots", f"sweep-{key}.png")
                if os.path.isfile(png):
                    text += ["", f"![{key}]({os.path.relpath(png)})"]
        sections.append("\n".join(text))
    return sections, names, own


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--out", default=None, help="write the markdown here (default: print it)")
    parser.add_argument("--csv", default=None, help="also write the table as CSV")
    parser.add_argument("--grids", nargs="*", default=list(DEFAULT_GRIDS),
                        help="grid files whose variant rows get a section of their own in --out")
    args = parser.parse_args(argv)
    every = read_rows(args.results_dir)
    sections, names, own = grid_sections(args.grids, args.results_dir) if args.out else ([], set(), set())
    rows = [r for r in every if not (r.get("experiment") in names and r.get("experiment_variant"))
            and r.get("experiment") not in own]
    lines = summarise(rows)
    text = markdown(lines)
    control = control_markdown(against_control(every))  # every grid's rows, variants included
    control = ("## Fine-tuning against its control\n\nEach fine-tuning row paired with the control `sft-continued` "
               "of the same grid, seed and SFT checkpoint (the same fine-tuning budget, SFT loss only) and with that "
               "SFT run's own row: test NDCG@10, means over the paired seeds, mean paired difference and its "
               "two-sided paired t-test p (2+ seeds).\n\n" + control + "\n")
    pictures = sorted(glob.glob(os.path.join(args.results_dir, "plots", f"{CURVES}*.png")))
    if pictures:  # written by python -m recbole_gflowgr.curves
        control += ("\nValidation NDCG@10 per fine-tuning epoch, every run beside its control (`python -m "
                    "recbole_gflowgr.curves`):\n\n" + "".join(
                        f"![{os.path.basename(f)[len(CURVES):-4]}]({os.path.relpath(f)})\n" for f in pictures))
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Results\n\nGenerated by `python -m recbole_gflowgr.leaderboard` from `results/*.jsonl` "
                    "(test split, mean ± std over seeds; `*`: paired t-test p < 0.05 against the best other "
                    "fine-tuning method of the same backbone and dataset; `†`: the same test against the control `sft-continued` "
                    "(same SFT checkpoint and fine-tuning budget, SFT loss only); `[variant]`: a run with other settings than "
                    "the plain method, e.g. `[cm]` the collaborative SASRec that GFlowGR's sampler and reward use, "
                    "trained with properties/collaborative.yaml). Paper lines are the GFlowGR paper's "
                    "reported numbers, not ours.\n\n" + control + "\n## All runs\n\n" + text + "\n" +
                    "".join(f"\n{x}\n" for x in sections))
    else:
        print(control + "\n" + text)
    if args.csv:
        write_csv(lines, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
