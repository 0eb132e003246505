"""The SFT recipe study's table and plot (issue 22): per recipe (grid variant) the learning rate, schedule, batch,
backbone, best valid NDCG@10, test NDCG@10, how the run ended and how long it took; a PNG of valid NDCG@10 against
wall time per recipe (the rows' ``valid_curve``). Recipes are compared on the **valid** split; test is shown only.

    python -m recbole_gflowgr.recipe --grid=properties/experiments/recipe.yaml [--results_dir=results]
                                     [--out=results/plots]

Writes ``<out>/<grid name>.md`` and ``<out>/<grid name>-<dataset>.png`` (one panel per model) and prints the table.
Cells without a row are listed as missing.
"""
import argparse
import collections
import os
import sys

from recbole_gflowgr.analysis import grid_rows, pyplot, save_figure
from recbole_gflowgr.experiments import load_grid
from recbole_gflowgr.foundation.errors import ConfigError, cli

METRIC = "ndcg@10"
HEAD = ["dataset", "model", "recipe", "lr", "schedule", "warmup", "batch", "backbone", f"valid {METRIC}",
        f"test {METRIC}", "best epoch", "epochs", "stopped early", "min to best", "min total"]


def describe(config):
    """(lr, schedule, warmup, batch, backbone) of a row's config."""
    warmup = config.get("warmup_steps") or (f"{config['warmup_ratio']:.0%}" if config.get("warmup_ratio") else 0)
    schedule = config.get("lr_scheduler") or "constant"
    if schedule in ("linear", "cosine"):
        schedule += f" ({config.get('lr_decay_epochs') or config.get('epochs')} ep)"  # the decay horizon
    backbone = (f"{config.get('num_encoder_layers')}+{config.get('num_decoder_layers')}L d{config.get('d_model')} "
                f"ff{config.get('d_ff')}")
    return f"{config.get('learning_rate'):g}", schedule, str(warmup), str(config.get("train_batch_size")), backbone


def minutes_to_best(row):
    """Wall minutes from the fit's start to the validation of the best epoch (``valid_curve``), or None."""
    for point in row.get("valid_curve") or []:
        if point["epoch"] == row.get("best_epoch"):
            return point["elapsed_s"] / 60
    return None


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def recipe_table(grid, results_dir="results"):
    """Markdown, one line per (dataset, model, recipe) in grid order; the best valid score per (dataset, model) in
    bold; then the missing cells."""
    found, missing = [], []
    for cell, row in grid_rows(grid, results_dir):
        (found if row is not None else missing).append((cell, row))
    best = {}
    for cell, row in found:
        key = (cell["dataset"], cell["model"])
        best[key] = max(best.get(key, -1.0), row["valid"].get(METRIC, -1.0))
    out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for cell, row in found:
        valid = row["valid"].get(METRIC)
        shown = _fmt(valid, ".4f")
        if valid is not None and valid == best[(cell["dataset"], cell["model"])]:
            shown = f"**{shown}**"
        stopped = row.get("stopped_early")
        out.append("| " + " | ".join([
            cell["dataset"], cell["model"], cell["variant"] or "—", *describe(row.get("config", {})), shown,
            _fmt(row["test"].get(METRIC), ".4f"), _fmt(row.get("best_epoch"), "d"),
            _fmt(row.get("epochs_trained", row.get("epochs")), "d"), "—" if stopped is None else str(stopped).lower(),
            _fmt(minutes_to_best(row), ".1f"), _fmt(row["wall_s"] / 60, ".1f")]) + " |")
    if missing:
        out.append("")
        out.append("missing: " + "; ".join(cell.label for cell, _ in missing))
    return "\n".join(out)


def plot_curves(grid, results_dir="results", out_dir=None):
    """One PNG per dataset, one panel per model, one line per recipe: valid NDCG@10 against wall minutes since the
    fit started (best epoch marked); returns the paths."""
    plt = pyplot()
    curves = collections.OrderedDict()  # dataset -> model -> [(recipe, row)]
    for cell, row in grid_rows(grid, results_dir):
        if row is not None and row.get("valid_curve"):
            curves.setdefault(cell["dataset"], collections.OrderedDict()).setdefault(cell["model"], []).append(
                (cell["variant"] or "—", row))
    out_dir = out_dir or os.path.join(results_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for dataset, models in curves.items():
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
        for ax, (model, runs) in zip(axes[0], models.items()):
            for recipe, row in runs:
                pts = [p for p in row["valid_curve"] if p.get(METRIC) is not None]
                line, = ax.plot([p["elapsed_s"] / 60 for p in pts], [p[METRIC] for p in pts], label=recipe, lw=1.2)
                best = [p for p in pts if p["epoch"] == row.get("best_epoch")]
                if best:
                    ax.plot(best[0]["elapsed_s"] / 60, best[0][METRIC], "o", color=line.get_color(), ms=4)
            ax.set_title(f"{model} SFT, {dataset}")
            ax.set_xlabel("wall minutes since the start of training")
            ax.set_ylabel(f"valid {METRIC}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        paths.append(save_figure(fig, os.path.join(out_dir, f"{grid['name']}-{dataset}.png")))
    return paths


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="properties/experiments/recipe.yaml")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--out", default=None, help="folder of the table and PNGs (default: <results_dir>/plots)")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    table = recipe_table(grid, args.results_dir)
    if not any(row is not None for _, row in grid_rows(grid, args.results_dir)):
        raise ConfigError(f"no rows yet for {args.grid} in {args.results_dir}/; run python -m "
                          f"recbole_gflowgr.experiments --grid={args.grid} --only=<variant> first")
    out = args.out or os.path.join(args.results_dir, "plots")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{grid['name']}.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    for p in [path] + plot_curves(grid, args.results_dir, out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
