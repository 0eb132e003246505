"""The trained inputs of the tables, committed beside their rows so that a fresh clone continues them.

    python -m recbole_gflowgr.artifacts pack      # after a grid: what its rows start from -> results/artifacts/
    python -m recbole_gflowgr.artifacts restore   # on a fresh clone (the grid runner does it first)

A fine-tuning cell starts from its seed's SFT checkpoint, which starts from the dataset's semantic IDs. Neither is
reproducible bit for bit on another machine (the text encoder's and RQ-VAE's float reductions differ across CPUs
and thread counts; other IDs are another SFT base), and training them again costs 1.5-2.5 h per SFT on the 2-core
CPU. So ``pack`` copies them into ``<results_dir>/artifacts/``:

* ``tokenizer/<dataset>/<folder>/``: every semantic-ID folder of each dataset with rows or unfinished runs
  (``index.json``, ``stats.json``, ``config.json``, the quantiser), as ``get_semantic_ids`` caches it under
  ``<data_path>/<dataset>/tokenizer/``;
* ``sft/<name>.pth``: the SFT checkpoint of every SFT row (``sft_cache``) found here, without its optimizer state
  (fine-tuning starts its own optimizer); the name holds the hash of the backbone config, seed and semantic IDs;
* ``collaborative/<name>.pth``: the collaborative SASRec of each dataset (GFlowGR's sampler and reward), likewise,
  with its metrics file ``<name>.json``;
* ``resume/<run id>-last.pth``: the last checkpoint (``resume.py``, optimizer state included) of every grid cell
  that was cut off before its row was written (and of the SFT run that a fine-tuning cell trains when its SFT
  checkpoint is missing, until a row names its best checkpoint), and of a collaborative model cut off before it
  was cached, with its best checkpoint (without optimizer state) beside it: a run longer than a session (an SFT
  of amazon-beauty, of LETTER) continues in the next one from its last validation instead of from epoch 0. Once
  the run has finished (its row, the collaborative model its cache), ``pack`` removes them.

``restore`` converts each packed dataset from its registered source if it is not converted yet, and copies what
is missing into ``<data_path>`` and ``<checkpoint_dir>``; it never overwrites (a local last checkpoint is newer than
the packed one). Semantic IDs computed here before that differ from
the packed ones are reported: runs then train a new base (their SFT cache name differs), as they should.
"""
import argparse
import filecmp
import glob
import os
import shutil
import sys

from recbole_gflowgr.foundation.errors import ConfigError, GFlowGRError, cli
from recbole_gflowgr.foundation.utils import atomic_copy, atomic_folder, atomic_save
from recbole_gflowgr.trainer.resume import LAST_SUFFIX
from recbole_gflowgr.trainer.results import read_rows

KINDS = ("sft", "collaborative")  # checkpoint folders under checkpoint_dir, packed under the same names
RESUME = "resume"  # packed last checkpoints of unfinished runs (and their best checkpoints)


def artifacts_dir(results_dir):
    return os.path.join(results_dir, "artifacts")


def slim_copy(src, dst):
    """Copy the RecBole checkpoint ``src`` to ``dst`` without its optimizer state (atomically), with the metrics
    file beside it (``<name>.json``, the collaborative model's) if there is one."""
    from recbole_gflowgr.foundation.compat import trusted_torch_load

    state = trusted_torch_load(src)
    state.pop("optimizer", None)
    atomic_save(state, dst)
    _copy_sidecar(src, dst)


def _copy_sidecar(src, dst):
    if os.path.isfile(src[:-4] + ".json"):
        shutil.copyfile(src[:-4] + ".json", dst[:-4] + ".json")


def finished_runs(rows):
    """What has finished according to ``rows`` (a results folder's): (the grid cells, ``experiment_cell``, and the
    best-checkpoint file names, ``checkpoint``, of the rows)."""
    return ({r["experiment_cell"] for r in rows if r.get("experiment_cell")},
            {os.path.basename(r["checkpoint"]) for r in rows if r.get("checkpoint")})


def _key(config, key):
    try:
        return config[key]  # RecBole's Config: None for a key it does not have
    except (KeyError, TypeError):
        return None


def _pending(path, done, checkpoint_dir):
    """(state, whether the run of the last checkpoint ``path`` is still to finish): a grid cell without its row
    (``done``: :func:`finished_runs`); a run of a grid outside its cells (the SFT that a fine-tuning cell trains
    when its checkpoint is missing) that has validated and has no row naming its best checkpoint; a collaborative
    model (trained inside a GFlowGR / LETTER run) without its cache in ``checkpoint_dir``. False for any other run
    (outside a grid: no row to continue)."""
    from recbole_gflowgr.foundation.compat import trusted_torch_load
    from recbole_gflowgr.quick_start import cm_cache_path

    state = trusted_torch_load(path)
    config, (cells, checkpoints) = state.get("config"), done
    if _key(config, "experiment_cell"):
        return state, config["experiment_cell"] not in cells
    if _key(config, "experiment_variant") == "cm" and hasattr(config, "final_config_dict"):
        cache = os.path.basename(cm_cache_path(config))  # under the checkpoint_dir of this machine, not the run's
        return state, not os.path.isfile(os.path.join(checkpoint_dir, "collaborative", cache))
    if _key(config, "experiment") and _best_of(state):
        return state, os.path.basename(_best_of(state)) not in checkpoints
    return state, False


def _best_of(state):
    return (state.get("resume") or {}).get("best_file") or None  # None: no validation had run yet


def _pack_resume(results_dir, rows, checkpoint_dir, say):
    """Pack the last checkpoints of unfinished runs; drop the packed ones that have finished since (``rows``: those
    of ``results_dir``). Returns the paths written and the datasets of the packed runs."""
    folder, written, done = os.path.join(artifacts_dir(results_dir), RESUME), [], finished_runs(rows)
    for src in sorted(glob.glob(os.path.join(checkpoint_dir, "*" + LAST_SUFFIX))):
        dst = os.path.join(folder, os.path.basename(src))
        state, pending = _pending(src, done, checkpoint_dir)
        if not pending or (os.path.isfile(dst) and filecmp.cmp(src, dst, shallow=False)):
            continue
        best = _best_of(state)  # written to the run's checkpoint_dir, relative to its cwd: found beside the last one
        best = best and os.path.join(checkpoint_dir, os.path.basename(best))
        if best and not os.path.isfile(best):
            say(f"note: {src} not packed: its best checkpoint {best} is missing")
            continue
        if best:
            slim_copy(best, os.path.join(folder, os.path.basename(best)))
        atomic_copy(src, dst)
        written.append(dst)
    kept, datasets = set(), set()  # the best checkpoints that a packed last checkpoint still names; their datasets
    for packed in sorted(glob.glob(os.path.join(folder, "*" + LAST_SUFFIX))):
        state, pending = _pending(packed, done, checkpoint_dir)
        if not pending:  # finished since: nothing left to resume
            os.remove(packed)
            say(f"removed {packed} (its run has finished)")
            continue
        datasets.add(_key(state.get("config"), "dataset"))
        if _best_of(state):
            kept.add(os.path.basename(_best_of(state)))
    for path in glob.glob(os.path.join(folder, "*.pth")):  # a finished run's, or a run started over since
        if not path.endswith(LAST_SUFFIX) and os.path.basename(path) not in kept:
            os.remove(path)
    return written, datasets - {None}


def pack(results_dir="results", data_path="dataset", checkpoint_dir="saved", say=print):
    """Copy the semantic IDs, SFT and collaborative checkpoints that ``results_dir``'s rows start from, and the last
    checkpoints of unfinished runs, into ``<results_dir>/artifacts``; returns the paths written (what is packed
    already is left as it is). ``say`` gets a line per packed last checkpoint removed or not packed."""
    out, rows = artifacts_dir(results_dir), read_rows(results_dir)
    written, unfinished = _pack_resume(results_dir, rows, checkpoint_dir, say)
    sft = {os.path.basename(r["sft_cache"]): r["dataset"] for r in rows if r.get("sft_cache")}
    here = {name: ds for name, ds in sft.items() if os.path.isfile(os.path.join(checkpoint_dir, "sft", name))}
    for name, dataset in sorted(here.items()):
        dst = os.path.join(out, "sft", name)
        if not os.path.isfile(dst):
            slim_copy(os.path.join(checkpoint_dir, "sft", name), dst)
            written.append(dst)
    # a dataset's IDs and collaborative model: for its rows and for its unfinished runs (a resumed SFT must read
    # the IDs it started with, and IDs recomputed on another machine differ)
    for dataset in sorted({r["dataset"] for r in rows} | unfinished):
        for src in sorted(glob.glob(os.path.join(checkpoint_dir, "collaborative", f"{dataset}-SASRec-*.pth"))):
            dst = os.path.join(out, "collaborative", os.path.basename(src))
            if not os.path.isfile(dst):
                slim_copy(src, dst)
                written.append(dst)
        for folder in sorted(glob.glob(os.path.join(data_path, dataset, "tokenizer", "*", "index.json"))):
            folder = os.path.dirname(folder)
            dst = os.path.join(out, "tokenizer", dataset, os.path.basename(folder))
            if not os.path.isdir(dst):
                shutil.copytree(folder, dst)
                written.append(dst)
    return written


def restore(results_dir="results", data_path="dataset", checkpoint_dir="saved", say=print):
    """Copy the packed artifacts of ``results_dir`` that are missing into ``data_path`` / ``checkpoint_dir``;
    returns the paths written. ``say`` gets one line per restored or conflicting artifact."""
    out, written = artifacts_dir(results_dir), []
    for dataset_dir in sorted(glob.glob(os.path.join(out, "tokenizer", "*"))):
        dataset = os.path.basename(dataset_dir)
        if not os.path.isfile(os.path.join(data_path, dataset, f"{dataset}.inter")):
            from recbole_gflowgr.data import prepare_dataset  # the IDs live beside the converted files: convert first

            try:
                prepare_dataset(dataset, os.path.join(data_path, dataset))
            except GFlowGRError as e:  # e.g. a user's dataset whose source is given per run
                say(f"note: semantic IDs of {dataset} not restored (convert it first: {e})")
                continue
        for folder in sorted(glob.glob(os.path.join(dataset_dir, "*"))):
            dst = os.path.join(data_path, dataset, "tokenizer", os.path.basename(folder))
            if not os.path.isdir(dst):
                with atomic_folder(dst) as tmp:
                    shutil.copytree(folder, tmp, dirs_exist_ok=True)
                written.append(dst)
                say(f"restored semantic IDs {dst}")
            elif not filecmp.cmp(os.path.join(folder, "index.json"), os.path.join(dst, "index.json"), shallow=False):
                say(f"note: {dst} holds other semantic IDs than {folder}: runs here train a new SFT base; remove "
                    f"{dst} to continue the committed one")
    for kind in KINDS:
        for src in sorted(glob.glob(os.path.join(out, kind, "*.pth"))):
            dst = os.path.join(checkpoint_dir, kind, os.path.basename(src))
            if not os.path.isfile(dst):
                atomic_copy(src, dst)
                _copy_sidecar(src, dst)
                written.append(dst)
                say(f"restored {kind} checkpoint {dst}")
    return written + _restore_resume(results_dir, checkpoint_dir, say)


def _restore_resume(results_dir, checkpoint_dir, say):
    """Put the packed last checkpoints of unfinished runs (and their best ones) into ``checkpoint_dir``, the best
    file's path in the last checkpoint rewritten if it lands elsewhere; a local last checkpoint is left as it is."""
    folder, written = os.path.join(artifacts_dir(results_dir), RESUME), []
    done = finished_runs(read_rows(results_dir))
    for src in sorted(glob.glob(os.path.join(folder, "*" + LAST_SUFFIX))):
        dst = os.path.join(checkpoint_dir, os.path.basename(src))
        if os.path.isfile(dst):
            continue
        state, pending = _pending(src, done, checkpoint_dir)
        if not pending:  # finished since it was packed (its row or its cache is here)
            continue
        best = _best_of(state)
        if best:
            packed_best, local_best = (os.path.join(d, os.path.basename(best)) for d in (folder, checkpoint_dir))
            if not os.path.isfile(packed_best):
                say(f"note: {src} not restored: its best checkpoint {packed_best} is missing")
                continue
            atomic_copy(packed_best, local_best)
            written.append(local_best)
        if best and best != local_best:  # another checkpoint_dir than the run's: the path it names is rewritten
            state["resume"]["best_file"] = local_best
            atomic_save(state, dst, pickle_protocol=4)
        else:  # byte for byte: the next pack sees it unchanged until the run moves on
            atomic_copy(src, dst)
        written.append(dst)
        say(f"restored the last checkpoint of an unfinished run {dst} ({state.get('epoch', -1) + 1} epochs done)")
    return written


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["pack", "restore"])
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--data_path", default="dataset", help="root of the converted datasets (config data_path)")
    parser.add_argument("--checkpoint_dir", default="saved", help="config checkpoint_dir")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.results_dir):
        raise ConfigError(f"--results_dir={args.results_dir} does not exist")
    if args.what == "pack":
        for path in pack(args.results_dir, args.data_path, args.checkpoint_dir):  # removals: printed as they go
            print(f"packed {path}")
    else:
        restore(args.results_dir, args.data_path, args.checkpoint_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
