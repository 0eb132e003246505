"""Re-key a grid's result rows after a default changed: ``experiment_cell`` of each row that no longer names one of the
grid's cells is set to the cell whose config the row ran with.

    python -m recbole_gflowgr.rekey --grid=properties/experiments/<grid>.yaml [--results_dir=results] [--dry_run]

A cell's key is a hash of its overrides, and an override equal to the config's default is dropped (experiments.py):
so changing a default (in ``small.yaml``, or a key's default in ``recbole_gflowgr/properties/``) changes the keys of
the cells that set that key (and a changed config file, every key of the grids that read it), and the runner would
run them again. A row goes to cell C only if the hash of the keys its run reads (every non-volatile key it ran with;
for SFT the backbone's keys only, for the control no method's own keys) equals that of C's config (the same dataset, model, method and seed, built the way the runner builds it). A row whose
config no cell of the grid has any more is orphaned: its ``experiment_cell`` becomes null (the old key is kept as
``experiment_cell_before``), so no cell counts it as done, even one whose key did not change but whose config did.
Rows are rewritten in place, atomically per file.
"""
import argparse
import json
import os
import sys
import tempfile

import yaml

from recbole_gflowgr.experiments import expand, load_grid
from recbole_gflowgr.foundation.errors import ConfigError, cli
from recbole_gflowgr.foundation.utils import atomic_file


def run_hash(plain, model, finetune):
    """``config_hash`` of the keys a run of ``finetune`` reads: an SFT (or classic) run its backbone keys, the control
    ``sft-continued`` no method's own keys, a fine-tuning method all; so a changed default of a key a run does not read
    leaves its row where it is."""
    from recbole_gflowgr import OUR_MODELS
    from recbole_gflowgr.finetune import control_keys
    from recbole_gflowgr.trainer.results import backbone_keys, config_hash

    if model not in OUR_MODELS or finetune == "sft":
        plain = backbone_keys(plain)
    elif finetune == "sft-continued":
        plain = control_keys(plain)
    return config_hash(plain)


def row_hash(row, keys=None):
    """:func:`run_hash` of the config a row ran with; with ``keys`` (a cell's config keys) only those: a key the row
    has and the cell's config lacks was set by the run itself (e.g. RecBole's BERT4Rec adds MASK_ITEM_SEQ to its
    config) or has been removed since, and tells nothing about the cell."""
    if not row.get("config"):
        return row.get("config_hash")
    config = row["config"] if keys is None else {k: v for k, v in row["config"].items() if k in keys}
    return run_hash(config, row["model"], row["finetune"])


def cell_hash(cell):
    """:func:`run_hash` of the config the runner gives ``cell`` (its config files, its overrides, seed, method)."""
    return run_hash(cell_config(cell), cell["model"], cell["finetune"])


def cell_config(cell):
    """The plain config the runner gives ``cell`` (its config files, its overrides, seed, method)."""
    from recbole_gflowgr import OUR_MODELS
    from recbole_gflowgr.foundation.paths import REPO_ROOT
    from recbole_gflowgr.quick_start import as_finetuning, load_config
    from recbole_gflowgr.trainer.results import plain_config

    files = [f if os.path.isabs(f) else os.path.join(REPO_ROOT, f) for f in cell["config_files"]]
    args = [f"--seed={cell['seed']}"] + ([f"--finetune={cell['finetune']}"] if cell["model"] in OUR_MODELS else [])
    with tempfile.TemporaryDirectory() as tmp:
        if cell["overrides"]:  # as run_cell gives them: a yaml after the grid's config files
            files.append(os.path.join(tmp, "cell.yaml"))
            with open(files[-1], "w") as f:
                yaml.safe_dump(dict(cell["overrides"]), f)
        config = load_config(cell["model"], cell["dataset"], files, None, args)
    if cell["model"] in OUR_MODELS and cell["finetune"] != "sft":
        as_finetuning(config)
    return plain_config(config)


def rekey(grid, results_dir="results", dry_run=False):
    """{"kept": n, "moved": [(old, new, label)], "orphans": [(key, what)]} for the rows of ``grid``."""
    cells = expand(grid)
    keys = {c.key for c in cells}
    from recbole_gflowgr import OUR_MODELS

    def run_of(model, dataset, seed, finetune):  # rows of classic models say finetune "none"
        return dataset, model, seed, finetune if model in OUR_MODELS else "none"

    by_run = {}
    for cell in cells:
        by_run.setdefault(run_of(cell["model"], cell["dataset"], cell["seed"], cell["finetune"]), []).append(cell)
    report = {"kept": 0, "moved": [], "orphans": []}
    configs = {}  # cell key -> (its config's keys, its run_hash)
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        if not name.endswith(".jsonl"):
            continue
        path = os.path.join(results_dir, name)
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        changed = False
        for row in rows:
            if row.get("experiment") != grid["name"] or not row.get("experiment_cell"):
                continue
            match = None
            for cell in by_run.get(run_of(row["model"], row["dataset"], row["seed"], row["finetune"]), []):
                if cell.key not in configs:
                    plain = cell_config(cell)
                    configs[cell.key] = set(plain), run_hash(plain, cell["model"], cell["finetune"])
                keys, chash = configs[cell.key]
                if chash == row_hash(row, keys):
                    match = cell
                    break
            what = f"{row['dataset']} {row['model']} {row['finetune']} seed={row['seed']} " \
                   f"[{row.get('experiment_variant') or ''}]"
            if match is not None and match.key == row["experiment_cell"]:
                report["kept"] += 1
                continue
            if match is None:  # its config is no cell's now: it must not count as a cell's run
                report["orphans"].append((row["experiment_cell"], what))
                row["experiment_cell_before"], row["experiment_cell"] = row["experiment_cell"], None
            else:
                report["moved"].append((row["experiment_cell"], match.key, what))
                row["experiment_cell"], row["experiment_variant"] = match.key, match["variant"] or None
            changed = True
        if changed and not dry_run:
            with atomic_file(path) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)
    return report


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="grid yaml (see properties/experiments/)")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--dry_run", action="store_true", help="say what would move, write nothing")
    args = parser.parse_args(argv)
    report = rekey(load_grid(args.grid), args.results_dir, args.dry_run)
    for old, new, what in report["moved"]:
        print(f"{'would move' if args.dry_run else 'moved'} {what}: cell {old} -> {new}")
    for old, what in report["orphans"]:
        print(f"no cell has the config of {what} (cell {old}) any more: orphaned, the runner will run its cell")
    print(f"{report['kept']} rows already keyed, {len(report['moved'])} re-keyed, {len(report['orphans'])} orphaned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
