"""``get_model`` / ``get_trainer``: this package's classes first, RecBole's as fallback."""
import importlib
import os
import pkgutil

import recbole.model

from recbole_gflowgr.errors import ConfigError

# name -> module under recbole_gflowgr that defines the class of that name
OUR_MODELS = {"TIGER": "recbole_gflowgr.model.tiger", "LETTER": "recbole_gflowgr.model.letter"}
_RECBOLE_SUBMODULES = ["general_recommender", "context_aware_recommender", "sequential_recommender",
                       "knowledge_aware_recommender", "exlib_recommender"]


def recbole_model_names():
    """Lower-case module names of RecBole's models, found without importing them (the exlib package imports
    lightgbm/xgboost at import time, which used to mask the 'unknown model' error)."""
    base = os.path.dirname(recbole.model.__file__)
    return {m.name: sub for sub in _RECBOLE_SUBMODULES for m in pkgutil.iter_modules([os.path.join(base, sub)])}


def get_model(name):
    if name in OUR_MODELS:
        return getattr(importlib.import_module(OUR_MODELS[name]), name)
    sub = recbole_model_names().get(name.lower())
    if sub is None:
        raise ConfigError(f"unknown model '{name}' (--model): use one of {', '.join(OUR_MODELS)} or a RecBole model "
                          f"name such as SASRec, BERT4Rec, GRU4Rec (case-sensitive)")
    module = importlib.import_module(f"recbole.model.{sub}.{name.lower()}")
    if not hasattr(module, name):
        raise ConfigError(f"unknown model '{name}' (--model): RecBole's module {module.__name__} defines no class of "
                          "that name; check the capitalisation (e.g. SASRec, BERT4Rec)")
    return getattr(module, name)


def get_trainer(model_type, model_name, config=None):
    """Our trainer for our models (by fine-tuning method), RecBole's otherwise, with checkpoint loading made safe
    for torch >= 2.6 (see ``trainer.CheckpointMixin``)."""
    from recbole.utils import get_trainer as recbole_get_trainer

    from recbole_gflowgr.trainer import with_checkpoint_fix

    if model_name in OUR_MODELS:
        from recbole_gflowgr.finetune import get_finetune_trainer

        return get_finetune_trainer(config["finetune"] if config is not None else "sft")
    return with_checkpoint_fix(recbole_get_trainer(model_type, model_name))
