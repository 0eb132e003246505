"""Result rows: one JSON object per run, appended to ``<results_dir>/<dataset>.jsonl``."""
import enum
import hashlib
import json
import os
import subprocess

import torch

from recbole_gflowgr.foundation.paths import REPO_ROOT
from recbole_gflowgr.trainer.schedule import FINETUNE_PREFIX, NEUTRAL

METRIC_KEYS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
# keys that change where/how a run is stored or shown, not what it computes: left out of config_hash
VOLATILE_KEYS = {"seed", "data_path", "checkpoint_dir", "results_dir", "show_progress", "gpu_id", "device", "state",
                 "log_wandb", "wandb_project", "worker", "source_path", "local_rank", "single_spec", "use_gpu",
                 "nproc", "world_size", "ip", "port", "offset", "tokenizer_dir", "pretrained_checkpoint",
                 "experiment", "experiment_cell", "experiment_variant",
                 "resume", "gflowgr_logz_bound"}  # resume.py, numerics.py: how a run continues / is monitored
# schedule keys (schedule.py) at their neutral value (constant lr, no warmup): the hash is that of the runs before
# the keys existed (the collaborative model's cache, SFT caches, resume ids)
NEUTRAL_KEYS = {prefix + key: value for prefix in ("", FINETUNE_PREFIX) for key, value in NEUTRAL.items()}
NEUTRAL_KEYS.update({"time_budget_s": 0, FINETUNE_PREFIX + "time_budget_s": 0})  # budget.py: off
NEUTRAL_KEYS.update({"fast_dropout": False, "compile": False})  # fast_t5.py: off (HF T5's own numerics)
TAG_KEYS = ("experiment", "experiment_cell", "experiment_variant")  # copied from the config into the row
FINETUNE_KEYS = ("finetune", "pretrained_checkpoint")
FINETUNE_PREFIXES = ("finetune_", "gflowgr_", "dpo_", "sdpo_", "sprec_", "ipa_", "ppo_", "grpo_")


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def plain_config(config):
    return {k: _plain(v) for k, v in sorted(config.final_config_dict.items())}


def backbone_keys(values):
    """``values`` (a dict of config keys) without the fine-tuning keys: what the SFT backbone depends on."""
    return {k: v for k, v in values.items() if k not in FINETUNE_KEYS and not k.startswith(FINETUNE_PREFIXES)}


def config_hash(plain):
    stable = {k: v for k, v in plain.items() if k not in VOLATILE_KEYS}
    if str(stable.get("enable_amp")) != "True":  # amp_dtype only matters under autocast: hashes of fp32 runs (CM,
        stable.pop("amp_dtype", None)  # SFT caches, resume ids) stay those of the runs before the key existed
    for key, neutral in NEUTRAL_KEYS.items():  # keys added later, at the value that reproduces the runs before
        if key in stable and stable[key] == neutral:  # them: left out, so those runs' caches / ids stay valid
            stable.pop(key)
    return hashlib.sha1(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def git_commit():
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", ".",
                                ":!results", ":!RESULTS.md"], cwd=REPO_ROOT,  # rows appended by runs are not code
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def metrics(result):
    result = {k.lower(): float(v) for k, v in (result or {}).items()}
    return {k: round(result[k], 6) for k in METRIC_KEYS if k in result} | \
        {k: round(v, 6) for k, v in result.items() if k not in METRIC_KEYS}


def make_row(config, finetune, valid_result, test_result, wall_s, commit, extra=None):
    """``commit``: :func:`git_commit` taken when the run started (the code that ran), with ``-dirty`` if the work
    tree then had uncommitted or untracked files."""
    plain = plain_config(config)
    row = {"model": config["model"], "finetune": finetune, "dataset": config["dataset"], "seed": config["seed"],
           "valid": metrics(valid_result), "test": metrics(test_result), "wall_s": round(wall_s, 2),
           "device": device_name(config["device"]), "commit": commit, "config_hash": config_hash(plain)}
    row.update({k: plain[k] for k in TAG_KEYS if plain.get(k)})
    row.update(extra or {})
    row["config"] = plain
    return row


def append_row(row, results_dir):
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{row['dataset']}.jsonl")
    line = json.dumps(row, sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # one write of one line: never a half row
        f.write(line)
    return path


def read_rows(results_dir):
    rows = []
    if not os.path.isdir(results_dir):
        return rows
    for name in sorted(os.listdir(results_dir)):
        if name.endswith(".jsonl"):
            with open(os.path.join(results_dir, name), encoding="utf-8") as f:
                rows += [json.loads(line) for line in f if line.strip()]
    return rows
