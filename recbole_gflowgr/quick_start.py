"""``run``: one training + evaluation run through RecBole, ending in a result row. Never imports
``recbole.quick_start`` (it imports ray).

The runtime's caches live here too, as ``run`` trains what they miss: the SFT checkpoint a fine-tuning run starts
from (:func:`sft_checkpoint`) and GFlowGR's collaborative model (CM, §3: RecBole's SASRec with
``properties/collaborative.yaml``, :func:`cm_checkpoint`), whose scorer the fine-tuning trainers get
(:func:`load_scorer`) and whose item embeddings LETTER's tokenizer gets (:func:`sasrec_item_embeddings`), both as
arguments: the model, tokenizer and trainer code never calls ``run``.
"""
import json
import logging
import os
import sys
import time
from logging import getLogger

import numpy as np
import torch

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_gflowgr.config import PROPERTIES, Config
from recbole_gflowgr.data import dataset_settings, prepare_dataset
from recbole_gflowgr.foundation.compat import trusted_torch_load
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.trainer import budget, distributed
from recbole_gflowgr.finetune import FINETUNE_HEADS, get_finetune_trainer  # noqa: F401 (FINETUNE_HEADS: old home)
from recbole_gflowgr.foundation.utils import atomic_copy, training_lock
from recbole_gflowgr.foundation.validation import check_catalogue
from recbole_gflowgr.model.collaborative import CollaborativeScorer
from recbole_gflowgr.registry import OUR_MODELS, get_model, get_trainer
from recbole_gflowgr.trainer.results import append_row, backbone_keys, config_hash, git_commit, make_row, plain_config
from recbole_gflowgr.trainer.resume import read_checkpoint


def load_config(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=()):
    return Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict,
                  cmd_args=cmd_args)


def prepare_data(config, logger=None):
    """Convert the source if needed, then RecBole's dataset and train/valid/test loaders."""
    prepare_dataset(config["dataset"], config["data_path"], config["source_path"], config["source_prefix"], logger)
    dataset = create_dataset(config)
    return dataset, data_preparation(config, dataset)


def build_model(config, dataset):
    """RecBole's ``model_class(config, dataset)``; our generative models get the CM's item embeddings (LETTER's
    tokenizer needs them) through ``dataset.cf_embeddings`` (read by ``TIGER._semantic_ids``)."""
    if config["model"] in OUR_MODELS:
        dataset.cf_embeddings = sasrec_item_embeddings
    return get_model(config["model"])(config, dataset)


def prepare_caches(config):
    """What every process of a multi-process run would otherwise build concurrently: RecBole's folders (its
    ``ensure_dir`` races), the converted dataset, the semantic IDs."""
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    prepare_dataset(config["dataset"], config["data_path"], config["source_path"], config["source_prefix"])
    if config["model"] in OUR_MODELS:
        from recbole_gflowgr.model import tiger

        tiger.fetch_semantic_ids(config, config["tokenizer"] or get_model(config["model"]).default_tokenizer,
                                 cf_embeddings=sasrec_item_embeddings)


def sft_cache_path(config):
    """``<checkpoint_dir>/sft/<dataset>-<model>-<hash>.pth``: the hash covers every config key except the
    fine-tuning ones, so every fine-tuning run of the same backbone config and seed shares one SFT checkpoint (the
    seed is in: fine-tuning with seed 43 starts from the SFT run of seed 43, so rows pair by seed)."""
    from recbole_gflowgr.model.tiger import fetch_semantic_ids

    plain = backbone_keys(plain_config(config))
    plain["sft_seed"] = config["seed"]  # config_hash leaves "seed" out
    # the IDs themselves: other IDs (a changed tokenizer config, code or item text) give another SFT checkpoint; a
    # tokenizer change that leaves a dataset's IDs as they were keeps its checkpoints
    model_class = get_model(config["model"])
    prepare_dataset(config["dataset"], config["data_path"], config["source_path"], config["source_prefix"])
    plain["semantic_ids"] = fetch_semantic_ids(config, config["tokenizer"] or model_class.default_tokenizer,
                                               cf_embeddings=sasrec_item_embeddings).digest()
    return os.path.join(config["checkpoint_dir"], "sft", f"{config['dataset']}-{config['model']}-{config_hash(plain)}.pth")


def as_finetuning(config):
    """A fine-tuning run trains ``finetune_epochs`` epochs at ``finetune_learning_rate`` within
    ``finetune_time_budget_s`` (what its row records)."""
    config["epochs"] = config["finetune_epochs"]
    config["learning_rate"] = config["finetune_learning_rate"]
    config["time_budget_s"] = config["finetune_time_budget_s"]


def sft_checkpoint(model, dataset, config_file_list=None, config_dict=None, cmd_args=(), parent=None):
    """Path of the SFT checkpoint that fine-tuning starts from; trained now (its row appended) if not cached."""
    # the SFT run is not the fine-tuning run's grid cell: it gets no experiment tags (see experiments.py)
    cmd_args = [a for a in cmd_args if not a.startswith(("--finetune=", "--experiment_cell=", "--experiment_variant="))]
    cmd_args = cmd_args + ["--finetune=sft"]
    if parent is not None:  # the parent's dataset settings (the files and command line give the rest)
        config_dict = {**dataset_settings(parent), **(config_dict or {})}
    path = sft_cache_path(load_config(model, dataset, config_file_list, config_dict, cmd_args))
    if not os.path.isfile(path):
        with training_lock(path):  # concurrent fine-tuning runs of one backbone wait for one SFT run
            if not os.path.isfile(path):
                run(model, dataset, config_file_list, config_dict, cmd_args)  # caches its checkpoint at ``path``
    return path


def load_pretrained(model, path, config):
    """Load a backbone checkpoint into ``model``; only fine-tuning heads may be missing from it."""
    if not os.path.isfile(path):
        raise ConfigError(f"pretrained_checkpoint={path} does not exist; give a checkpoint written by an SFT run "
                          "(saved/...) or leave the key empty to train SFT first")
    state = read_checkpoint(path, f"pretrained_checkpoint={path}", "give a checkpoint written by an SFT run (saved/...)")
    other = state.get("config")
    if other is not None and (other["model"], other["dataset"]) != (config["model"], config["dataset"]):
        raise ConfigError(f"pretrained_checkpoint={path} is a {other['model']} model of dataset '{other['dataset']}', "
                          f"not {config['model']} on '{config['dataset']}'; point it at a matching SFT checkpoint")
    ids = state["state_dict"].get("item_tokens")
    if ids is not None and hasattr(model, "item_tokens") and not torch.equal(ids.cpu(), model.item_tokens.cpu()):
        raise ConfigError(f"pretrained_checkpoint={path} was trained on other semantic IDs than this run's "
                          f"({config['tokenizer']}, tokenizer_args={config['tokenizer_args']}): the tokenizer config "
                          "changed; retrain SFT (leave pretrained_checkpoint empty) or restore that tokenizer config")
    try:
        missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    except RuntimeError as e:
        raise ConfigError(f"pretrained_checkpoint={path} does not fit this model's shape ({str(e).splitlines()[1].strip()}); "
                          "use a checkpoint trained with the same backbone and tokenizer config") from None
    missing = [k for k in missing if not k.startswith(FINETUNE_HEADS)]
    if missing or unexpected:
        raise ConfigError(f"pretrained_checkpoint={path} does not match this model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); use a checkpoint of the same model and config")


def rebuild_run(path, what, adjust=None):
    """(config, model in eval mode, dataset, (train, valid, test) loaders) of a checkpoint a run wrote (ours or a
    RecBole model's), rebuilt from its own config on the CPU; ``adjust(config)`` may change (or refuse) the config
    first; fine-tuning heads in the checkpoint are ignored. ``what`` names the checkpoint in errors."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} does not exist; give a checkpoint a run wrote (its row names it, saved/...pth)")
    state = read_checkpoint(path, what, "give a checkpoint a run wrote (saved/...pth)")
    config = state["config"]
    config["device"], config["show_progress"] = torch.device("cpu"), False
    if adjust is not None:
        adjust(config)
    dataset, loaders = prepare_data(config)
    model = build_model(config, loaders[0]._dataset)
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    unexpected = [u for u in unexpected if not u.startswith(FINETUNE_HEADS)]
    if missing or unexpected:
        raise ConfigError(f"{what} does not fit its own config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return config, model.eval(), dataset, loaders


def training_summary(trainer):
    """Row fields of how training ended: ``epochs_trained``, ``best_epoch`` (both counted from 1), ``stopped_early``
    (early stopping ended it; False: the epoch bound or the time budget did), ``stopped_by`` (``"early_stopping"``,
    ``"epochs"`` or ``"time_budget"``, ``budget.py``) and ``valid_curve`` ([{epoch, elapsed_s, ndcg@10}], one per
    validation, ``resume.py``)."""
    if not getattr(trainer, "resumable", False):
        return {}
    return {"epochs_trained": len(getattr(trainer, "epoch_times", [])), "best_epoch": trainer.best_epoch,
            "stopped_early": bool(trainer.stopped_early), "stopped_by": trainer.stopped_by,
            "valid_curve": list(getattr(trainer, "valid_curve", []))}


def run(model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=(), saved=True):
    """Train ``model`` on ``dataset``, evaluate on valid/test, append a row under ``results_dir``; returns the row.

    For a generative model with ``finetune`` other than ``sft``, fine-tuning starts from ``pretrained_checkpoint``
    or, if that is empty, from the cached SFT checkpoint of the same config (trained first if absent), and runs
    ``finetune_epochs`` epochs at ``finetune_learning_rate``."""
    start, commit = time.time(), git_commit()
    config = load_config(model, dataset, config_file_list, config_dict, cmd_args)
    pretrained = None
    if config["model"] in OUR_MODELS and config["finetune"] != "sft":
        trainer_class = get_finetune_trainer(config["finetune"])  # unknown method: fail before any training
        if hasattr(trainer_class, "check_config"):
            trainer_class.check_config(config)
        manifest = prepare_dataset(config["dataset"], config["data_path"], config["source_path"], config["source_prefix"])
        if manifest.get("n_items"):  # the rules that need the catalogue, before the SFT run
            check_catalogue(config.final_config_dict, manifest["n_items"])
        pretrained = config["pretrained_checkpoint"] or sft_checkpoint(
            config["model"], config["dataset"], config_file_list, config_dict, cmd_args, parent=config)
        as_finetuning(config)
    budget_start = budget.clock()  # time_budget_s counts from here: the SFT run trained above had its own
    if distributed.launching(config):  # --nproc > 1 or a world_size: start the processes, each runs this run()
        return distributed.launch(run, config, model, dataset, config_file_list, config_dict, cmd_args, saved,
                                  pretrained, prepare_caches)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(" ".join(sys.argv))
    logger.info(config)

    dataset, (train_data, valid_data, test_data) = prepare_data(config, logger)
    logger.info(dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = build_model(config, train_data._dataset).to(config["device"])
    if pretrained:
        load_pretrained(model, pretrained, config)
        logger.info(f"fine-tuning ({config['finetune']}) starts from {pretrained}")
    logger.info(model)
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"], config)
    trainer = distributed.trainer_class(trainer_class, config)(config, model)
    trainer.scorer_loader = load_scorer  # the CM's scorer, for the methods that reward with it (finetune/common.py)
    trainer.budget_start = budget_start
    if config["resume"]:
        trainer.resume_last()  # resume.py: continue from this run's last checkpoint, if any

    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                      show_progress=config["show_progress"])
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    if not distributed.is_main(config):  # one process of a multi-process run: global rank 0 writes the results
        return None

    finetune = config["finetune"] if config["model"] in OUR_MODELS else "none"
    prior = getattr(trainer, "prior_elapsed_s", 0.0)  # a resumed run: its earlier processes' time counts too
    resumed = {"resumed_s": round(prior, 2)} if prior else {}
    if prior and trainer.prior_elapsed_estimated:
        resumed["resumed_s_note"] = "earlier processes' training-epoch times only (checkpoint without elapsed_s)"
    row = make_row(config, finetune, best_valid_result, test_result, time.time() - start + prior, commit,
                   extra={**resumed, "epochs": len(getattr(trainer, "epoch_times", [])),
                          "epoch_s": trainer.mean_epoch_time(), **training_summary(trainer),
                          "checkpoint": trainer.saved_model_file if saved else None, "pretrained": pretrained,
                          "log": next((h.baseFilename for h in logging.getLogger().handlers
                                       if isinstance(h, logging.FileHandler)), None)})
    if saved and config["model"] in OUR_MODELS and config["finetune"] == "sft":
        cache = sft_cache_path(config)
        atomic_copy(trainer.saved_model_file, cache)
        row["sft_cache"] = cache
    if saved and config["model"] in OUR_MODELS:  # self-contained checkpoint for recommend.py (best model loaded)
        from recbole_gflowgr.export import export_checkpoint, export_path

        row["export"] = export_checkpoint(model, config, dataset, export_path(trainer.saved_model_file))
    path = append_row(row, config["results_dir"])
    logger.info(f"result row appended to {path}")
    trainer.discard_last()  # the row is written: nothing left to resume
    return row


# ----- the collaborative model (GFlowGR §3): trained once per dataset through run(), then cached -------------
CM_CONFIG = os.path.join(PROPERTIES, "collaborative.yaml")


def _settings(data_path):
    """``data_path``: the root of the converted datasets, or the parent's :func:`dataset_settings` dict."""
    return dict(data_path) if isinstance(data_path, dict) else {"data_path": data_path}


def _cm_config(dataset, data_path="dataset", config_dict=None):
    overrides = {**_settings(data_path), "show_progress": False, **(config_dict or {})}
    return load_config("SASRec", dataset, config_file_list=[CM_CONFIG], config_dict=overrides)


def cm_cache_path(config):
    """``<checkpoint_dir>/collaborative/<dataset>-SASRec-<config hash>.pth``."""
    folder = os.path.join(config["checkpoint_dir"], "collaborative")
    return os.path.join(folder, f"{config['dataset']}-SASRec-{config_hash(plain_config(config))}.pth")


def cm_checkpoint(dataset, data_path="dataset", config_dict=None):
    """Path of the trained CM checkpoint for ``dataset`` (trained now if not cached; concurrent callers wait for
    the one that trains). ``data_path``: a root folder or the parent run's ``dataset_settings(config)`` (what every
    caller inside a run passes, so that the CM sees the same source as its parent)."""
    config = _cm_config(dataset, data_path, config_dict)
    path = cm_cache_path(config)
    if os.path.isfile(path):
        return path
    with training_lock(path):
        if not os.path.isfile(path):  # another process may have finished it while we waited
            _train_cm(dataset, data_path, config_dict, path)
    return path


def _train_cm(dataset, data_path, config_dict, path):
    # resume: an interrupted CM training (hours on CPU for yelp) continues from its last epoch's checkpoint
    # its row is labelled "cm" (not part of config_hash) so the leaderboard tells it from Table 1's SASRec cells,
    # which train with RecBole's defaults (up to 300 epochs) rather than collaborative.yaml's 50
    overrides = {**_settings(data_path), "show_progress": False, "resume": True, "experiment_variant": "cm",
                 **(config_dict or {})}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        row = run("SASRec", dataset, config_file_list=[CM_CONFIG], config_dict=overrides)
    finally:  # run() points the logger at the CM's own log file: give the caller's run its log back
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    atomic_copy(row["checkpoint"], path)
    with open(path[:-4] + ".json", "w") as f:
        json.dump({k: row[k] for k in ("valid", "test", "wall_s", "device", "commit", "config_hash")}, f, indent=1)
    getLogger().info(f"collaborative model cached at {path}")


def load_scorer(dataset, data_path="dataset", device="cpu", config_dict=None, recbole_dataset=None):
    """Train (if needed) and load the CM of ``dataset``; ``recbole_dataset`` avoids rebuilding RecBole's dataset."""
    path = cm_checkpoint(dataset, data_path, config_dict)
    if recbole_dataset is None:
        recbole_dataset, _ = prepare_data(_cm_config(dataset, data_path, config_dict))
    return CollaborativeScorer.from_checkpoint(path, recbole_dataset, device)


def sasrec_item_embeddings(dataset, data_root="dataset", device="cpu", config_dict=None):
    """(item tokens, (n, d) float32 array): the CM's item embeddings for every real item (padding dropped);
    ``data_root`` as ``data_path`` of :func:`cm_checkpoint`."""
    config = _cm_config(dataset, data_root, config_dict)
    path = cm_checkpoint(dataset, data_root, config_dict)
    prepare_dataset(config["dataset"], config["data_path"], config["source_path"], config["source_prefix"])
    recbole_dataset = create_dataset(config)
    weight = trusted_torch_load(path, map_location=device)["state_dict"]["item_embedding.weight"]  # (n_items, d)
    ids = np.arange(1, weight.shape[0])
    tokens = [str(t) for t in recbole_dataset.id2token(recbole_dataset.iid_field, ids)]
    return tokens, weight[1:].float().cpu().numpy()
