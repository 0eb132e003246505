"""Fine-tuning curves: every method's validation score per fine-tuning epoch beside its control, per SFT checkpoint.

    python -m recbole_gflowgr.curves [--results_dir=results] [--out=results/plots] [--metric=ndcg@10]

Writes ``<out>/finetune-curves-<dataset>.png``: one panel per (backbone, seed, SFT checkpoint) that fine-tuning
rows started from (their ``pretrained``), x = fine-tuning epoch (0 = the SFT run's best validation score, where
every run starts), one line per method and variant (the control ``sft-continued`` black and dashed), a dot at each
run's best epoch (the checkpoint its test metrics come from). Rows of every grid are read, so the sweep's variants
sit beside Table 1's cells of the same checkpoint. Prints one line per panel: the best validation score of each
run and its difference from the control's.
"""
import argparse
import collections
import os
import sys

from recbole_gflowgr.analysis import pyplot, save_figure
from recbole_gflowgr.finetune import CONTROL
from recbole_gflowgr.foundation.errors import ConfigError, cli
from recbole_gflowgr.trainer.results import METRIC_KEYS, read_rows

PREFIX = "finetune-curves-"  # <out>/finetune-curves-<dataset>.png (the leaderboard links them)


def label(row):
    """'gflowgr-tb [gflowgr_lambda=0.025]': the method and, for a variant row, its variant."""
    variant = row.get("experiment_variant")
    return row["finetune"] + (f" [{variant}]" if variant else "")


def panels(rows):
    """{(dataset, model, seed, checkpoint): {"sft": SFT row or None, "runs": [fine-tuning rows]}}, the control
    first, then GFlowGR, then the other methods; only rows with a ``valid_curve``."""
    sft = {r["sft_cache"]: r for r in rows if r.get("finetune") == "sft" and r.get("sft_cache")}
    out = collections.OrderedDict()
    for r in rows:
        if r.get("finetune") in (None, "none", "sft") or not r.get("pretrained") or not r.get("valid_curve"):
            continue
        key = (r["dataset"], r["model"], r["seed"], r["pretrained"])
        out.setdefault(key, {"sft": sft.get(r["pretrained"]), "runs": []})["runs"].append(r)
    for panel in out.values():
        panel["runs"].sort(key=lambda r: (r["finetune"] != CONTROL, not r["finetune"].startswith("gflowgr"),
                                          label(r)))
    return out


def summary(panels_, metric="ndcg@10"):
    """One text line per panel: each run's valid ``metric`` at its best epoch (the row's ``valid``) and its
    difference from the control's."""
    lines = []
    for (dataset, model, seed, _), panel in panels_.items():
        control = next((r for r in panel["runs"] if r["finetune"] == CONTROL), None)
        parts = []
        for r in panel["runs"]:
            text = f"{label(r)} {r['valid'][metric]:.4f}"
            if control is not None and r is not control:
                text += f" ({r['valid'][metric] - control['valid'][metric]:+.4f})"
            parts.append(text)
        start = f"SFT {panel['sft']['valid'][metric]:.4f}; " if panel["sft"] else ""
        lines.append(f"{dataset} {model} seed {seed}: valid {metric} best: {start}" + ", ".join(parts))
    return lines


def plot(panels_, out_dir, metric="ndcg@10"):
    """One PNG per dataset (see the module's docstring); returns the paths."""
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    by_dataset = collections.OrderedDict()
    for key, panel in panels_.items():
        by_dataset.setdefault(key[0], []).append((key, panel))
    paths = []
    for dataset, items in by_dataset.items():
        cols = min(3, len(items))
        rows_ = (len(items) + cols - 1) // cols
        fig, axes = plt.subplots(rows_, cols, figsize=(5.0 * cols, 3.6 * rows_), squeeze=False)
        names = sorted({label(r) for _, panel in items for r in panel["runs"] if r["finetune"] != CONTROL})
        colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}  # one colour per run label
        for ax, ((_, model, seed, checkpoint), panel) in zip(axes.flat, items):
            start = panel["sft"]["valid"].get(metric) if panel["sft"] else None
            for r in panel["runs"]:
                pts = [p for p in r["valid_curve"] if p.get(metric) is not None]
                x = ([0] if start is not None else []) + [p["epoch"] for p in pts]
                y = ([start] if start is not None else []) + [p[metric] for p in pts]
                colour = "black" if r["finetune"] == CONTROL else colours[label(r)]
                ax.plot(x, y, lw=1.2, label=label(r), color=colour, linestyle="--" if colour == "black" else "-")
                top = [p for p in pts if p["epoch"] == r.get("best_epoch")]
                if top:
                    ax.plot(top[0]["epoch"], top[0][metric], "o", color=colour, ms=4)
            sft = panel["sft"]
            recipe = (sft.get("experiment_variant") or "") if sft else ""
            where = f"SFT best epoch {sft.get('best_epoch')}" + (f", {recipe}" if recipe else "") if sft else \
                os.path.basename(checkpoint)
            ax.set_title(f"{model} seed {seed} ({where})", fontsize=9)
            ax.set_xlabel("fine-tuning epoch (0: the SFT checkpoint)")
            ax.set_ylabel(f"valid {metric}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(items):]:
            ax.axis("off")
        paths.append(save_figure(fig, os.path.join(out_dir, f"{PREFIX}{dataset}.png")))
    return paths


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--out", default=None, help="PNG folder (default: <results_dir>/plots)")
    parser.add_argument("--metric", default="ndcg@10", choices=list(METRIC_KEYS))
    args = parser.parse_args(argv)
    found = panels(read_rows(args.results_dir))
    if not found:
        raise ConfigError(f"no fine-tuning rows with a valid_curve in {args.results_dir}/; run a fine-tuning "
                          "method first, e.g. python -m recbole_gflowgr.experiments "
                          "--grid=properties/experiments/table1.yaml --only=TIGER,42")
    for line in summary(found, args.metric):
        print(line)
    for path in plot(found, args.out or os.path.join(args.results_dir, "plots"), args.metric):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
