"""Experiment runner: a grid of models × fine-tuning methods × datasets × seeds (× variants), resumable.

    python -m recbole_gflowgr.experiments --grid=properties/experiments/table1.yaml [--jobs=2] [--dry_run]
                                          [--time_budget=540] [--only=TIGER,gflowgr-tb]

Each cell is one ``run_recbole_gflowgr.py`` process whose result row carries the cell's key (``experiment_cell``),
so a cell whose row is already in ``results/`` is skipped: re-running the command resumes the grid, and a cell
that was cut off continues from its last checkpoint (``--resume``, see resume.py). Cells run in
dependency order (a backbone's ``sft`` cells before its fine-tuning cells; the collaborative SASRec and the SFT
checkpoint are trained once and shared through their caches and locks). ``--jobs`` runs several cells at once
(small models share one GPU; on CPU each job gets cores // jobs threads). ``--time_budget`` (seconds) starts no cell
whose estimated time would overrun it — for machines lent by the hour, rerun the command to continue.

Grid yaml keys are documented in ``properties/experiments/table1.yaml``; a cell's key hashes the dataset, model,
method, seed, the contents of its config files and its overrides, so editing a yaml re-runs the cells it changes.
Overrides equal to the value the config has anyway are dropped first: the sweep's default value, an ablation's
``full`` variant and the Table 1 cell of the same method are one run, shown under each of their labels.
"""
import argparse
import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import yaml
from tqdm import tqdm

from recbole_gflowgr.foundation.errors import ConfigError, cli
from recbole_gflowgr.foundation.paths import REPO_ROOT
from recbole_gflowgr.foundation.utils import take_pid_file
from recbole_gflowgr.trainer.results import read_rows

GRID_KEYS = {"name", "title", "datasets", "models", "finetunes", "baselines", "seeds", "config_files",
             "baseline_config_files", "config", "variants", "sweep"}
OUR_MODELS = ("TIGER", "LETTER")


class Cell(dict):
    """One run: dataset, model, finetune ('none' for classic models), seed, variant, overrides, config_files."""

    @property
    def key(self):
        files = [(f, _read(f)) for f in self["config_files"]]
        blob = json.dumps([self["dataset"], self["model"], self["finetune"], self["seed"], files, self["overrides"]],
                          sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def label(self):
        variant = f" [{self['variant']}]" if self["variant"] else ""
        return f"{self['dataset']} {self['model']} {self['finetune']}{variant} seed={self['seed']}"


def _read(path):
    full = path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)
    if not os.path.isfile(full):
        raise ConfigError(f"config file {path} (listed in the grid's config_files) does not exist; fix the path")
    with open(full) as f:
        return f.read()


def load_grid(path):
    """The grid yaml as a dict with every key filled in; one clear error for a bad grid."""
    if not os.path.isfile(path):
        raise ConfigError(f"--grid={path} does not exist; see properties/experiments/ for examples")
    try:
        with open(path) as f:
            grid = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--grid={path} is not valid yaml ({str(e).splitlines()[0]})") from None
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown grid key(s) {sorted(unknown)}; known keys: {sorted(GRID_KEYS)}")
    grid.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    for key, default in (("datasets", []), ("models", []), ("finetunes", ["sft"]), ("baselines", []),
                         ("seeds", [42, 43, 44]), ("config_files", []), ("baseline_config_files", []),
                         ("config", {}), ("variants", {}), ("sweep", {})):
        grid[key] = default if grid.get(key) is None else grid[key]
        if not isinstance(grid[key], type(default)):
            raise ConfigError(f"{path}: '{key}' must be a {type(default).__name__}, got {grid[key]!r}")
    if not grid["datasets"]:
        raise ConfigError(f"{path}: 'datasets' is empty; list at least one dataset")
    for name, values in grid["sweep"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: sweep.{name} must be a non-empty list of values")
    for name, overrides in grid["variants"].items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: variants.{name} must be a mapping of config keys to values")
    return grid


def expand(grid):
    """The grid's cells in run order: per dataset and seed, classic baselines, then each backbone's SFT cells, then
    its fine-tuning cells (the runner starts a fine-tuning cell only after its SFT cell has ended)."""
    variants = dict(grid["variants"])
    for key, values in grid["sweep"].items():  # one key at a time (the paper's Fig. 3), not a cross product
        variants.update({f"{key}={v}": {key: v} for v in values})
    variants = variants or {"": {}}
    cells = []
    for dataset in grid["datasets"]:
        for seed in grid["seeds"]:
            for model in grid["baselines"]:
                cells.append(_cell(grid, dataset, model, "none", seed, "", {}))
            for model in grid["models"]:
                for stage in ("sft", "finetune"):
                    for variant, overrides in variants.items():
                        for finetune in grid["finetunes"]:
                            if (finetune == "sft") == (stage == "sft"):
                                cells.append(_cell(grid, dataset, model, finetune, seed, variant, overrides))
    seen, unique = set(), []
    for cell in cells:  # an sft cell does not depend on fine-tuning variants: keep one of each; variants that
        # are one run (e.g. the sweep's default value) keep their labels; the control (sft-continued) reads no
        # method's keys: one cell per run, under its first label
        tag = cell.key if cell["finetune"] == "sft-continued" else (cell.key, cell["variant"])
        if tag not in seen:
            seen.add(tag)
            unique.append(cell)
    return unique


def _cell(grid, dataset, model, finetune, seed, variant, overrides):
    overrides = dict(grid["config"], **overrides)
    # generative cells take the grid's config_files (e.g. the `small` backbone); classic RecBole models train with
    # their own defaults and our shared protocol (overall.yaml) plus baseline_config_files, never the backbone's
    # epoch cap
    files = list(grid["config_files"] if model in OUR_MODELS else grid["baseline_config_files"])
    if overrides:  # a value the config already has is no override: e.g. the sweep's default N is the full method's cell
        defaults = _defaults(dataset, model, finetune, tuple(files))
        overrides = {k: v for k, v in overrides.items() if k not in defaults or defaults[k] != v}
    if finetune == "sft" and model in OUR_MODELS:  # SFT ignores fine-tuning variants: one shared SFT cell
        from recbole_gflowgr.trainer.results import backbone_keys

        backbone = backbone_keys(overrides)
        if backbone != overrides:
            overrides, variant = backbone, ""
    if finetune == "sft-continued" and model in OUR_MODELS:  # the control reads no method's keys: one run per seed
        from recbole_gflowgr.finetune import control_keys

        control = control_keys(overrides)
        if control != overrides:
            overrides, variant = control, ""
    return Cell(dataset=dataset, model=model, finetune=finetune, seed=int(seed), variant=variant,
                overrides=overrides, config_files=files, grid=grid["name"])


@functools.lru_cache(maxsize=None)
def _defaults(dataset, model, finetune, config_files):
    """The config a cell would have without overrides (its config files over our and RecBole's defaults)."""
    from recbole_gflowgr.quick_start import load_config

    files = [f if os.path.isabs(f) else os.path.join(REPO_ROOT, f) for f in config_files]
    args = [f"--finetune={finetune}"] if model in OUR_MODELS else []
    return dict(load_config(model, dataset, files, None, args).final_config_dict)


def sft_key(grid, cell):
    """Key of the SFT cell that fine-tuning ``cell`` starts from (None for SFT and classic cells)."""
    if cell["model"] not in OUR_MODELS or cell["finetune"] == "sft":
        return None
    return _cell(grid, cell["dataset"], cell["model"], "sft", cell["seed"], cell["variant"], cell["overrides"]).key


def control_key(grid, cell):
    """Key of the control cell (``sft-continued``: same dataset, model, seed and SFT checkpoint, the variant's
    backbone and fine-tuning-budget keys) of fine-tuning ``cell``; None for SFT, the control and classic cells."""
    from recbole_gflowgr.finetune import CONTROL

    if cell["model"] not in OUR_MODELS or cell["finetune"] in ("sft", CONTROL):
        return None
    return _cell(grid, cell["dataset"], cell["model"], CONTROL, cell["seed"], cell["variant"], cell["overrides"]).key


def plain_key(grid, cell):
    """Key of the cell of the same dataset, model, method and seed with none of the variant's overrides."""
    return _cell(grid, cell["dataset"], cell["model"], cell["finetune"], cell["seed"], "", {}).key


def done_cells(results_dir, rows=None, grid=None):
    """{cell key: row} of the rows that runs of this runner appended (``rows``: already read from
    ``results_dir``); the latest row of a cell wins. With ``grid``: a fine-tuning cell whose row started from
    another SFT checkpoint (``pretrained``) than its control's row of the same seed is not done, since that row
    belongs to an older base (its SFT retrained since): the runner runs it again and the tables count it missing."""
    rows = read_rows(results_dir) if rows is None else rows
    done = {row["experiment_cell"]: row for row in rows if row.get("experiment_cell")}
    if grid is not None:
        for cell in expand(grid):
            row, control = done.get(cell.key), done.get(control_key(grid, cell))
            if row and control and _base(row) != _base(control):
                del done[cell.key]
    return done


def _base(row):
    """The SFT checkpoint a fine-tuning row started from, by file name (checkouts differ in folders)."""
    return os.path.basename(row.get("pretrained") or "")


def command(cell, cell_yaml):
    args = [sys.executable, os.path.join(REPO_ROOT, "run_recbole_gflowgr.py"), f"--model={cell['model']}",
            f"--dataset={cell['dataset']}", f"--seed={cell['seed']}", f"--experiment={cell['grid']}",
            f"--experiment_cell={cell.key}", "--show_progress=False", "--resume=True"]  # a cut-off cell continues
    if cell["model"] in OUR_MODELS:
        args.append(f"--finetune={cell['finetune']}")
    if cell["variant"]:
        args.append(f"--experiment_variant={cell['variant']}")
    files = [os.path.join(REPO_ROOT, f) if not os.path.isabs(f) else f for f in cell["config_files"]]
    if cell["overrides"]:
        files.append(cell_yaml)
    if files:
        args.append("--config_files=" + " ".join(files))
    return args


def run_cell(cell, results_dir, log_dir, threads):
    """Run one cell in its own process; returns (row or None, wall seconds, log path)."""
    os.makedirs(log_dir, exist_ok=True)
    cell_yaml = os.path.join(log_dir, f"{cell.key}.yaml")
    with open(cell_yaml, "w") as f:
        yaml.safe_dump(dict(cell["overrides"]), f)
    args = command(cell, cell_yaml) + [f"--results_dir={results_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_path = os.path.join(log_dir, f"{cell.key}.log")
    start = time.time()
    with open(log_path, "w") as log:
        log.write(" ".join(args) + "\n")
        log.flush()
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    row = done_cells(results_dir).get(cell.key) if code == 0 else None  # (its own row: the latest of the cell)
    if row and row.get("log") and os.path.isfile(row["log"]):  # keep RecBole's log of the run beside the results
        keep = os.path.join(results_dir, "logs", cell["dataset"])
        os.makedirs(keep, exist_ok=True)
        shutil.copy(row["log"], keep)
    return row, time.time() - start, log_path


def claim(cell, results_dir):
    """Mark ``cell`` as running in this process (``<results_dir>/.running/<key>.pid``); False if a live process
    already runs it (two runner commands on one grid share the work instead of repeating it)."""
    return take_pid_file(os.path.join(results_dir, ".running", f"{cell.key}.pid")) == 0


def release(cell, results_dir):
    path = os.path.join(results_dir, ".running", f"{cell.key}.pid")
    if os.path.isfile(path):
        os.remove(path)


def device_kind(device):
    """'gpu' or 'cpu' for a row's ``device`` (``results.device_name``: 'cpu (N threads)' or the GPU's name)."""
    return "cpu" if str(device).startswith("cpu") else "gpu"


def estimate(cell, history, kind="cpu"):
    """Seconds expected for ``cell``: the mean wall time of earlier rows of the same dataset, model and method that
    ran on the same kind of device (CPU rows say nothing about a GPU machine's time budget, and back)."""
    same = [r["wall_s"] for r in history if (r.get("dataset"), r.get("model"), r.get("finetune")) ==
            (cell["dataset"], cell["model"], cell["finetune"] if cell["model"] in OUR_MODELS else "none")
            and device_kind(r.get("device", "cpu")) == kind]
    return sum(same) / len(same) if same else None


def run_grid(grid, results_dir="results", jobs=1, time_budget=None, dry_run=False, only=(), launcher=run_cell,
             log_dir=None, threads=None):
    """Run the grid's missing cells; returns {"done": [...], "ran": [...], "failed": [...], "skipped": [...]}."""
    every = expand(grid)
    chosen = {c.key for c in every
              if all(o in (c["model"], c["finetune"], c["dataset"], c["variant"], str(c["seed"])) for o in only)}
    chosen |= {sft_key(grid, c) for c in every if c.key in chosen}  # a chosen fine-tuning cell brings its SFT cell
    cells = []  # one per run (variants that are one run share it), in grid order
    for cell in every:
        if cell.key in chosen:
            chosen.discard(cell.key)
            cells.append(cell)
    rows = read_rows(results_dir)
    finished = done_cells(results_dir, rows, grid)
    todo = [c for c in cells if c.key not in finished]
    pending = {c.key for c in todo}
    # a row beside a control still to run may be of an older base: judged once that control has its row, so last
    deferred = {c.key for c in cells if c.key in finished and control_key(grid, c) in pending}
    todo += [c for c in cells if c.key in deferred]
    history = [r for r in rows if "wall_s" in r]
    import torch

    kind = "gpu" if torch.cuda.is_available() else "cpu"  # where this runner's cells will run
    known = [estimate(c, history, kind) for c in todo]
    fallback = sum(k for k in known if k) / max(1, sum(1 for k in known if k)) or None
    total = sum(k or fallback or 0 for k in known)
    print(f"grid {grid['name']}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run"
          + (f", estimated {total / 3600:.1f} h of runs at jobs=1" if total else ""), flush=True)
    report = {"done": [c for c in cells if c.key in finished and c.key not in deferred], "ran": [], "failed": [],
              "skipped": []}
    if dry_run:
        for cell, est in zip(todo, known):
            print(f"  to run: {cell.label} ({f'~{est / 60:.0f} min' if est else 'no estimate'})" +
                  (" unless its row turns out to start from its control's new SFT checkpoint"
                   if cell.key in deferred else ""))
        report["skipped"] = todo
        return report
    from recbole_gflowgr.artifacts import restore

    restore(results_dir, say=lambda line: print(line, flush=True))  # a fresh clone continues the committed bases
    log_dir = log_dir or os.path.join("log", "experiments", grid["name"])
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    start, lock = time.time(), threading.Lock()
    blocked = set()  # cells that failed or were not started: fine-tuning cells of such an SFT cell are not started

    def work(cell, est):
        backbone = sft_key(grid, cell)
        if backbone in futures:  # its SFT cell: submitted (so started) earlier, FIFO; wait for it
            futures[backbone].result()
        if cell.key in deferred:  # its control: submitted earlier too
            futures[control_key(grid, cell)].result()
        with lock:
            left = None if time_budget is None else time_budget - (time.time() - start)
            if backbone in blocked or (left is not None and (left <= 0 or (est and est > left))):
                report["skipped"].append(cell)
                blocked.add(cell.key)
                return
        if not claim(cell, results_dir):
            with lock:
                report["skipped"].append(cell)
                blocked.add(cell.key)
                tqdm.write(f"{cell.label} is being run by another process: left to it")
            return
        if cell.key in done_cells(results_dir, read_rows(results_dir), grid):  # another runner finished it since
            release(cell, results_dir)
            with lock:
                report["done"].append(cell)
                tqdm.write(f"{cell.label}: row kept (no control row on another SFT checkpoint)" if
                           cell.key in deferred else f"{cell.label} was finished by another process meanwhile")
            return
        try:
            row, wall, log_path = launcher(cell, results_dir, log_dir, threads)
        finally:
            release(cell, results_dir)
        with lock:
            if row is None:
                report["failed"].append(cell)
                blocked.add(cell.key)
                tqdm.write(f"FAILED {cell.label} after {wall:.0f} s: see {log_path}")
            else:
                report["ran"].append(cell)
                test = row.get("test", {})
                tqdm.write(f"done {cell.label} in {wall:.0f} s: " +
                           " ".join(f"{k}={v:.4f}" for k, v in test.items() if "@" in k))

    futures = {}
    with tqdm(total=len(todo), desc=f"grid {grid['name']}", unit="run") as bar:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for cell, est in zip(todo, known):  # grid order: a fine-tuning cell after its SFT cell
                futures[cell.key] = pool.submit(work, cell, est)
                futures[cell.key].add_done_callback(lambda _: bar.update(1))
            for future in list(futures.values()):
                future.result()
    print(f"grid {grid['name']}: ran {len(report['ran'])}, failed {len(report['failed'])}, "
          f"not started {len(report['skipped'])} (time budget or failed SFT); rerun the command to continue"
          if report["failed"] or report["skipped"] else f"grid {grid['name']}: complete", flush=True)
    return report


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="grid yaml (see properties/experiments/)")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once")
    parser.add_argument("--time_budget", type=float, default=None, help="seconds; start no cell that would overrun")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per cell (default: cores // jobs)")
    parser.add_argument("--only", default="", help="comma-separated filter on model/method/dataset/variant/seed "
                                                   "(all must match; e.g. --only=TIGER,42)")
    parser.add_argument("--dry_run", action="store_true", help="list the cells still to run, run nothing")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise ConfigError(f"--jobs={args.jobs} must be >= 1")
    grid = load_grid(args.grid)
    report = run_grid(grid, args.results_dir, args.jobs, args.time_budget, args.dry_run,
                      tuple(o for o in args.only.split(",") if o), threads=args.threads)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
