"""Tables and plots of a grid's rows (paper Table 2 and Fig. 3).

    python -m recbole_gflowgr.analysis table --grid=properties/experiments/ablation.yaml [--split=test]
    python -m recbole_gflowgr.analysis sweep --grid=properties/experiments/sweep.yaml [--metric=ndcg@10]
                                             [--split=valid] [--out=results/plots]

Rows are found by the grid's cell keys (see :mod:`recbole_gflowgr.experiments`), so a cell shared by two grids (the
ablation's ``full`` variant and Table 1's GFlowGR-TB cell) is run once and shown in both. Cells without a row are
shown as missing, never silently dropped.
"""
import argparse
import collections
import os
import sys

import numpy as np

from recbole_gflowgr.experiments import control_key, done_cells, expand, load_grid, plain_key, sft_key
from recbole_gflowgr.finetune import CONTROL
from recbole_gflowgr.foundation.errors import ConfigError, cli
from recbole_gflowgr.trainer.results import METRIC_KEYS


def grid_rows(grid, results_dir="results", finished=None):
    """[(cell, row or None)] in grid order."""
    finished = done_cells(results_dir, grid=grid) if finished is None else finished
    return [(cell, finished.get(cell.key)) for cell in expand(grid)]


def paired_p(a, b):
    """Two-sided paired t-test p-value of a vs b (same seeds); None with < 2 pairs or zero variance."""
    from scipy import stats

    if len(a) < 2:
        return None
    diff = np.asarray(a) - np.asarray(b)
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] != 0 else None
    return float(stats.ttest_rel(a, b).pvalue)


def delta_vs_plain(pairs):
    """'+0.0012 (p=0.34)' for [(variant value, plain value)] over common seeds; p from a paired t-test (2+ seeds)."""
    if not pairs:
        return "—"
    ours, plain = zip(*pairs)
    diffs = np.subtract(ours, plain)
    text = f"{diffs.mean():+.4f}"
    if len(diffs) > 1 and np.allclose(diffs, diffs[0]):  # no spread: a t-test says nothing useful
        return text + f" (in each of {len(diffs)} seeds)"
    p = paired_p(list(ours), list(plain))
    return text + (f" (p={p:.2f})" if p is not None else f" ({len(pairs)} seed{'s' * (len(pairs) > 1)})")


def variant_table(grid, results_dir="results", split="test", metric_vs_plain="ndcg@10"):
    """Markdown: one line per (dataset, model, method, variant), mean ± std over the seeds that have rows, and the
    mean paired difference of ``metric_vs_plain`` from the plain method's run (no overrides) and from the variant's
    control ``sft-continued`` (same SFT checkpoint and budget, SFT loss only), each over the seeds both have."""
    finished = done_cells(results_dir, grid=grid)  # a row of an older SFT base than its control's is missing
    groups = collections.OrderedDict()
    for cell, row in grid_rows(grid, results_dir, finished):
        key = (cell["dataset"], cell["model"], cell["finetune"], cell["variant"] or "—")
        groups.setdefault(key, []).append((cell, row))
    head = ["dataset", "model", "method", "variant", *METRIC_KEYS, f"Δ {metric_vs_plain} vs plain",
            f"Δ {metric_vs_plain} vs control", "seeds", "missing"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, model, finetune, variant), members in groups.items():
        rows = [r for _, r in members if r is not None]
        cells = []
        for metric in METRIC_KEYS:
            values = [r[split].get(metric, np.nan) for r in rows]
            if not values:
                cells.append("—")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4f}")
            else:
                cells.append(f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}")
        plain_keys = [plain_key(grid, cell) for cell, _ in members]
        if all(key == cell.key for key, (cell, _) in zip(plain_keys, members)):
            delta = "(plain)"
        else:  # (this variant, the plain run) per seed that both have
            pairs = [(row[split][metric_vs_plain], finished[key][split][metric_vs_plain])
                     for key, (_, row) in zip(plain_keys, members) if row is not None and key in finished]
            delta = delta_vs_plain(pairs)
        control = [control_key(grid, cell) for cell, _ in members]
        if any(key is None for key in control):  # SFT, the control itself, a classic model
            vs_control = "(control)" if all(c["finetune"] == CONTROL for c, _ in members) else "—"
        else:  # (this variant, its control sft-continued) per seed that both have
            vs_control = delta_vs_plain([(row[split][metric_vs_plain], finished[key][split][metric_vs_plain])
                                         for key, (_, row) in zip(control, members) if row is not None
                                         and key in finished])
        missing = [str(c["seed"]) for c, r in members if r is None]
        out.append(f"| {dataset} | {model} | {finetune} | {variant} | " + " | ".join(cells) + f" | {delta}" +
                   f" | {vs_control}" +
                   f" | {','.join(str(r['seed']) for r in rows) or '—'} | {','.join(missing) or '—'} |")
    return "\n".join(out)


SweepPoint = collections.namedtuple("SweepPoint", "value mean std n seeds scores control sft")
SweepPoint.__doc__ = """One value of a swept key: mean and std of the metric over ``seeds`` (``n`` of them), and per
seed ({seed: value}) the method's ``scores``, its control's (``sft-continued``) and its SFT run's (``sft``)."""


def sweep_points(grid, results_dir="results", metric="ndcg@10", split="valid"):
    """{(dataset, model, method, key): [SweepPoint]} for each swept key, values in grid order.

    A curve uses the seeds that all its points have (when there are any): otherwise a point shared with Table 1
    (the default value, run for every seed) would be a 3-seed mean beside single-seed neighbours."""
    finished = done_cells(results_dir, grid=grid)
    points = collections.OrderedDict()
    by_variant = collections.defaultdict(dict)  # variant -> {seed: score}
    refs = collections.defaultdict(lambda: ({}, {}))  # variant -> ({seed: control score}, {seed: SFT score})
    for cell, row in grid_rows(grid, results_dir, finished):
        control = control_key(grid, cell) if row is not None and "=" in cell["variant"] else None
        if control:  # a fine-tuning method's variant (the control and SFT are its references, not curves)
            key = (cell["dataset"], cell["model"], cell["finetune"], cell["variant"])
            by_variant[key][cell["seed"]] = row[split][metric]
            for ref, ref_key in zip(refs[key], (control, sft_key(grid, cell))):
                if ref_key in finished:
                    ref[cell["seed"]] = finished[ref_key][split][metric]
    for key, values in grid["sweep"].items():
        curves = collections.defaultdict(list)
        for (dataset, model, finetune, variant), scores in by_variant.items():
            name, _, value = variant.partition("=")
            if name == key:
                curves[(dataset, model, finetune, key)].append((value, scores, refs[(dataset, model, finetune,
                                                                                    variant)]))
        for curve, pts in curves.items():
            common = set.intersection(*(set(scores) for _, scores, _ in pts))
            for value, scores, (control, sft) in pts:
                seeds = sorted(common or scores)
                vals = [scores[s] for s in seeds]
                points.setdefault(curve, []).append(SweepPoint(
                    value, float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals),
                    tuple(seeds), {s: scores[s] for s in seeds}, {s: control[s] for s in seeds if s in control},
                    {s: sft[s] for s in seeds if s in sft}))
    for key in points:
        order = [str(v) for v in grid["sweep"][key[3]]]
        points[key].sort(key=lambda p: order.index(p[0]))
    return points


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported when a plot is first made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """``fig`` laid out tight, written as a 120-dpi PNG at ``path`` and closed; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def _reference(pts, which):
    """Per point, the mean of its reference runs (``which``: "control" or "sft") over the point's seeds, or NaN
    where a seed lacks one (no line drawn: a mean over other seeds would not be the same comparison)."""
    return np.array([np.mean([getattr(p, which)[s] for s in p.seeds]) if set(p.seeds) <= set(getattr(p, which))
                     else np.nan for p in pts])


def plot_sweep(points, out_dir, metric="ndcg@10", split="valid"):
    """One PNG per swept key (x: the key's values as categories). Left: the method's mean ± std over seeds per
    dataset/model/method, with its control (``sft-continued``, dashed) and SFT (dotted) over the same seeds where
    they have rows. Right, when controls exist: the paired difference from the control (mean ± std of the per-seed
    differences; 0 = the control). Returns the paths."""
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key in dict.fromkeys(k[3] for k in points):
        curves = [(k, pts) for k, pts in points.items() if k[3] == key]
        paired = any(not np.isnan(_reference(pts, "control")).all() for _, pts in curves)
        fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(9, 3.4) if paired else (4.5, 3.2), squeeze=False)
        ax = axes[0, 0]
        for (dataset, model, finetune, _), pts in curves:
            x = np.arange(len(pts))
            seeds = sorted({s for p in pts for s in p.seeds})
            line = ax.errorbar(x, [p.mean for p in pts], yerr=[p.std for p in pts], marker="o", capsize=3,
                               label=f"{dataset} {model} {finetune} (seed{'s' * (len(seeds) > 1)} "
                                     f"{','.join(map(str, seeds))})")
            colour = line[0].get_color()
            for which, style in (("control", "--"), ("sft", ":")):
                ref = _reference(pts, which)
                if not np.isnan(ref).all():
                    ax.plot(x, ref, linestyle=style, color=colour, alpha=0.7,
                            label=f"{model} {'control (sft-continued)' if which == 'control' else 'SFT'}")
            ax.set_xticks(x, [p.value for p in pts])
            if paired:
                diffs = [np.subtract([p.scores[s] for s in p.seeds], [p.control.get(s, np.nan) for s in p.seeds])
                         for p in pts]
                axes[0, 1].errorbar(x, [d.mean() for d in diffs], marker="o", capsize=3, color=colour,
                                    yerr=[d.std(ddof=1) if len(d) > 1 else 0.0 for d in diffs],
                                    label=f"{dataset} {model} {finetune} − control")
                axes[0, 1].set_xticks(x, [p.value for p in pts])
        ax.set_xlabel(key)
        ax.set_ylabel(f"{split} {metric}")
        ax.legend(fontsize=7)
        if paired:
            axes[0, 1].axhline(0.0, color="grey", linewidth=0.8)
            axes[0, 1].set_xlabel(key)
            axes[0, 1].set_ylabel(f"Δ {split} {metric} vs control (paired)")
            axes[0, 1].legend(fontsize=7)
        paths.append(save_figure(fig, os.path.join(out_dir, f"sweep-{key}.png")))
    return paths


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table", "sweep"])
    parser.add_argument("--grid", required=True)
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--split", default=None, help="valid or test (default: test for table, valid for sweep)")
    parser.add_argument("--metric", default="ndcg@10", choices=list(METRIC_KEYS))
    parser.add_argument("--out", default=None, help="table: markdown file (default: print); sweep: PNG folder")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    if args.what == "table":
        text = variant_table(grid, args.results_dir, args.split or "test")
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        print(text)
        return 0
    if not grid["sweep"]:
        raise ConfigError(f"{args.grid} has no 'sweep' key: nothing to plot")
    points = sweep_points(grid, args.results_dir, args.metric, args.split or "valid")
    if not points:
        raise ConfigError(f"no rows yet for the sweep of {args.grid} in {args.results_dir}/; run "
                          f"python -m recbole_gflowgr.experiments --grid={args.grid} first")
    for path in plot_sweep(points, args.out or os.path.join(args.results_dir, "plots"), args.metric,
                           args.split or "valid"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
