"""``Config``: RecBole's own, plus this project's yaml files (never re-implements ``Config.__init__``).

Precedence, lowest first: RecBole's internal yaml → ``properties/overall.yaml`` → our model yaml(s)
(``recbole_gflowgr/properties/model/<Model>.yaml`` of the class and its bases, then for our generative models
``recbole_gflowgr/properties/finetune/*.yaml``) → ``properties/datasets/<dataset>.yaml`` → the user's
``config_file_list`` → ``config_dict`` → command line ``--key=value``.
"""
import glob
import os

from recbole.config import Config as RecBoleConfig

from recbole_gflowgr.data.registry import get_dataset_spec
from recbole_gflowgr.foundation import compat
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.foundation.paths import REPO_PROPERTIES
from recbole_gflowgr.registry import OUR_MODELS

PROPERTIES = REPO_PROPERTIES
MODEL_PROPERTIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties", "model")
FINETUNE_PROPERTIES = os.path.join(os.path.dirname(MODEL_PROPERTIES), "finetune")


def _bundled(path):
    """``path``, or for a missing ``properties/<file>`` (README's commands, run outside a checkout) our own copy."""
    parts = os.path.normpath(path).split(os.sep)
    if not os.path.isfile(path) and len(parts) > 1 and parts[0] == "properties":
        ours = os.path.join(PROPERTIES, *parts[1:])
        if os.path.isfile(ours):
            return ours
    return path


class Config(RecBoleConfig):
    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=()):
        """``cmd_args``: the ``--key=value`` strings RecBole should read as its command line (default: none, so
        that e.g. pytest's own flags never leak into the config)."""
        config_file_list = [_bundled(p) for p in config_file_list or []] or None
        for path in config_file_list or []:
            if not os.path.isfile(path):
                raise ConfigError(f"config file {path} not found (from --config_files); check the path")
        seen, with_eq = {}, {}
        for arg in cmd_args or ():
            key, _, value = arg[2:].partition("=")
            if seen.setdefault(key, value) != value:
                raise ConfigError(f"--{key} is given twice with different values ({seen[key]!r}, {value!r}); keep one")
            if "=" in value:  # RecBole drops such an arg with a warning (e.g. --experiment_variant=gflowgr_n_aug=1)
                with_eq[key] = value
        if with_eq:  # so they go in with config_dict's, converted the way RecBole converts command-line values
            cmd_args = [a for a in cmd_args if a[2:].partition("=")[0] not in with_eq]
            config_dict = {**(config_dict or {}), **self._convert_config_dict(with_eq)}
        with compat.argv(cmd_args):
            super().__init__(model, dataset, config_file_list, config_dict)

    def _convert_config_dict(self, config_dict):
        """RecBole's conversion of command-line strings (``eval``), except that a key our schema types ``str`` keeps
        its text: a grid cell's key such as ``--experiment_cell=245474454162`` (or ``1234e5678901``, a float) stays
        the str it names; ``None`` still means ``~``."""
        from recbole_gflowgr.foundation.validation import schema

        raw = dict(config_dict)
        converted = super()._convert_config_dict(config_dict)
        specs = schema()
        for key, text in raw.items():
            if key in specs and specs[key].type == "str" and isinstance(text, str) and converted[key] is not None:
                converted[key] = text
        return converted

    def _get_model_and_dataset(self, model, dataset):
        from recbole_gflowgr.registry import get_model

        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ConfigError("no model given: pass --model=<name> (e.g. SASRec, TIGER) or set `model:` in a config file")
        if isinstance(model, str):
            model = get_model(model)
        if dataset is None and "dataset" not in self.external_config_dict:
            raise ConfigError("no dataset given: pass --dataset=<name> (e.g. ml-100k) or set `dataset:` in a config file")
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        dataset_file = os.path.join(PROPERTIES, "datasets", f"{dataset}.yaml")
        # a model's yaml extends those of its base classes (LETTER.yaml only says what differs from TIGER.yaml)
        model_files = [os.path.join(MODEL_PROPERTIES, f"{cls.__name__}.yaml") for cls in reversed(model_class.__mro__)]
        if model in OUR_MODELS:  # every fine-tuning method's defaults, so any --finetune works without extra files
            model_files += sorted(glob.glob(os.path.join(FINETUNE_PROPERTIES, "*.yaml")))
        for path in [os.path.join(PROPERTIES, "overall.yaml")] + model_files + [dataset_file]:
            if os.path.isfile(path):
                loaded = self._update_internal_config_dict(path) or {}
                if path == dataset_file:
                    self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]

    def _init_device(self):
        """RecBole's, except that a process of a multi-process run without a usable GPU joins a gloo group on the
        CPU (RecBole hardcodes NCCL and CUDA; see ``distributed.py``)."""
        from recbole_gflowgr.trainer import distributed

        if "local_rank" in self.final_config_dict and not distributed.uses_gpu(self.final_config_dict):
            distributed.join_cpu_group(self, super()._init_device)
        else:
            super()._init_device()

    def _set_default_parameters(self):
        from recbole_gflowgr.foundation.validation import validate

        # every key typed and range-checked (validation.py) before RecBole's own checks, conversion or training
        validate(self.final_config_dict, given=self.external_config_dict, model=self.model)
        super()._set_default_parameters()
        # RecBole points ml-100k at its bundled example; ours is converted under data_path like every dataset.
        root = self.external_config_dict.get("data_path", self.internal_config_dict.get("data_path", "dataset/"))
        source = self.final_config_dict.get("source_path")
        if get_dataset_spec(self.dataset, source) is not None:
            self.final_config_dict["data_path"] = os.path.join(root, self.dataset)
