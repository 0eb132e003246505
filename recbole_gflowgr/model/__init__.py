"""Generative recommenders registered as RecBole models, and ``get_model``: ours first, RecBole's as fallback."""
import importlib
import os
import pkgutil

from recbole_gflowgr import OUR_MODELS
from recbole_gflowgr.foundation.errors import ConfigError

_RECBOLE_SUBMODULES = ["general_recommender", "context_aware_recommender", "sequential_recommender",
                       "knowledge_aware_recommender", "exlib_recommender"]


def recbole_model_names():
    """Lower-case module names of RecBole's models, found without importing them (the exlib package imports
    lightgbm/xgboost at import time, which used to mask the 'unknown model' error)."""
    import recbole.model

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
