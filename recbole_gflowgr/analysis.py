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

from recbole_gflowgr.experiments import done_cells, expand, load_grid, plain_key
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.trainer.results import METRIC_KEYS


def grid_rows(grid, results_dir="results", finished=None):
    """[(cell, row or None)] in grid order."""
    finished = done_cells(results_dir) if finished is None else finished
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
    mean difference of ``metric_vs_plain`` from the plain method's run (no overrides) over the seeds both have."""
    finished = done_cells(results_dir)
    groups = collections.OrderedDict()
    for cell, row in grid_rows(grid, results_dir, finished):
        key = (cell["dataset"], cell["model"], cell["finetune"], cell["variant"] or "—")
        groups.setdefault(key, []).append((cell, row))
    head = ["dataset", "model", "method", "variant", *METRIC_KEYS, f"Δ {metric_vs_plain} vs plain", "seeds",
            "missing"]
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
        missing = [str(c["seed"]) for c, r in members if r is None]
        out.append(f"| {dataset} | {model} | {finetune} | {variant} | " + " | ".join(cells) + f" | {delta}" +
                   f" | {','.join(str(r['seed']) for r in rows) or '—'} | {','.join(missing) or '—'} |")
    return "\n".join(out)


def sweep_points(grid, results_dir="results", metric="ndcg@10", split="valid"):
    """{(dataset, model, method, key): [(value, mean, std, n, seeds)]} for each swept key, values in grid order.

    A curve uses the seeds that all its points have (when there are any): otherwise a point shared with Table 1
    (the default value, run for every seed) would be a 3-seed mean beside single-seed neighbours."""
    points = collections.OrderedDict()
    by_variant = collections.defaultdict(dict)  # variant -> {seed: score}
    for cell, row in grid_rows(grid, results_dir):
        if row is not None and "=" in cell["variant"]:
            by_variant[(cell["dataset"], cell["model"], cell["finetune"], cell["variant"])][cell["seed"]] = \
                row[split][metric]
    for key, values in grid["sweep"].items():
        curves = collections.defaultdict(list)
        for (dataset, model, finetune, variant), scores in by_variant.items():
            name, _, value = variant.partition("=")
            if name == key:
                curves[(dataset, model, finetune, key)].append((value, scores))
        for curve, pts in curves.items():
            common = set.intersection(*(set(scores) for _, scores in pts))
            for value, scores in pts:
                seeds = sorted(common or scores)
                vals = [scores[s] for s in seeds]
                points.setdefault(curve, []).append(
                    (value, float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals),
                     tuple(seeds)))
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


def plot_sweep(points, out_dir, metric="ndcg@10", split="valid"):
    """One PNG per swept key (lines: dataset/model/method; x: the key's values as categories); returns paths."""
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key in dict.fromkeys(k[3] for k in points):
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for (dataset, model, finetune, swept), pts in points.items():
            if swept != key:
                continue
            x = np.arange(len(pts))
            mean = np.array([p[1] for p in pts])
            std = np.array([p[2] for p in pts])
            seeds = sorted({s for p in pts for s in p[4]})
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3,
                        label=f"{dataset} {model} {finetune} (seed{'s' * (len(seeds) > 1)} {','.join(map(str, seeds))})")
            ax.set_xticks(x, [p[0] for p in pts])
        ax.set_xlabel(key)
        ax.set_ylabel(f"{split} {metric}")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, os.path.join(out_dir, f"sweep-{key}.png")))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["table", "sweep"])
    parser.add_argument("--grid", required=True)
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--split", default=None, help="valid or test (default: test for table, valid for sweep)")
    parser.add_argument("--metric", default="ndcg@10", choices=list(METRIC_KEYS))
    parser.add_argument("--out", default=None, help="table: markdown file (default: print); sweep: PNG folder")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        if args.what == "table":
            text = variant_table(grid, args.results_dir, args.split or "test")
            if args.out:
                with open(args.out, "w") as f:
                    f.write(text + "\n")
            print(text)
        else:
            if not grid["sweep"]:
                raise ConfigError(f"{args.grid} has no 'sweep' key: nothing to plot")
            points = sweep_points(grid, args.results_dir, args.metric, args.split or "valid")
            if not points:
                raise ConfigError(f"no rows yet for the sweep of {args.grid} in {args.results_dir}/; run "
                                  f"python -m recbole_gflowgr.experiments --grid={args.grid} first")
            for path in plot_sweep(points, args.out or os.path.join(args.results_dir, "plots"), args.metric,
                                   args.split or "valid"):
                print(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
