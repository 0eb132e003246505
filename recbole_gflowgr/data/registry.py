"""Registered datasets: where their source lives and which item text fields they have."""
import os
from dataclasses import dataclass

import recbole

from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.foundation.paths import SHARED_DATA

RECBOLE_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(recbole.__file__)), "dataset_example")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source_format: str  # "letter" (<Prefix>.inter.json + <Prefix>.item.json) or "recbole-ml" (ml-100k atomic)
    prefix: str  # file prefix inside the source folder
    default_source: str  # folder used when neither config nor CLI sets source_path


DATASETS = {
    spec.name: spec
    for spec in [
        DatasetSpec("amazon-beauty", "letter", "Beauty", os.path.join(SHARED_DATA, "amazon-beauty")),
        DatasetSpec("yelp", "letter", "Yelp", os.path.join(SHARED_DATA, "yelp")),
        DatasetSpec("industrial-scientific", "letter", "Scientific", os.path.join(SHARED_DATA, "industrial-scientific")),
        DatasetSpec("ml-100k", "recbole-ml", "ml-100k", os.path.join(RECBOLE_EXAMPLES, "ml-100k")),
    ]
}


def get_dataset_spec(name, source_path=None, source_prefix=None):
    """The spec of a registered dataset, or of a user's LETTER-format dataset given by ``source_path``."""
    if name in DATASETS:
        spec = DATASETS[name]
        if source_path or source_prefix:
            spec = DatasetSpec(spec.name, spec.source_format, source_prefix or spec.prefix,
                               source_path or spec.default_source)
        return spec
    if source_path:  # an unregistered LETTER-format folder: prefix defaults to the dataset name
        return DatasetSpec(name, "letter", source_prefix or name, source_path)
    return None


SOURCE_KEYS = ("source_path", "source_prefix", "text_fields")  # where a dataset's source is and which text it has


def dataset_settings(config, data_root=None):
    """The dataset settings every run a job starts for itself (collaborative SASRec, SFT cache run, tokenizer, LETTER's
    CM embeddings, the scorers of PPO/IPA/GFlowGR, diversity) takes over from its parent, so that an unregistered
    ``--source_path`` dataset works the whole way down: ``source_path``, ``source_prefix``, ``text_fields`` and
    ``data_path`` (the root of the converted datasets; ``data_root`` or the parent of the parent's
    ``<data_path>/<dataset>``). ``config``: a Config, its saved copy or a plain mapping (e.g. a tokenizer config)."""
    get = config.get if isinstance(config, dict) else (lambda k: config[k])
    if data_root is None:
        data_root = os.path.dirname(os.path.normpath(get("data_path") or os.path.join("dataset", "x")))
    settings = {"data_path": data_root}
    settings.update({k: get(k) for k in SOURCE_KEYS if get(k) is not None})
    return settings


def require_dataset_spec(name, source_path=None, source_prefix=None):
    spec = get_dataset_spec(name, source_path, source_prefix)
    if spec is None:
        raise ConfigError(
            f"dataset '{name}' is not registered (known: {', '.join(sorted(DATASETS))}); "
            f"for your own LETTER-format data set --source_path=<folder with {name}.inter.json and {name}.item.json>"
        )
    return spec
