"""Registered datasets: where their source lives and which item text fields they have."""
import os
from dataclasses import dataclass

import recbole

from recbole_gflowgr.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
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


def require_dataset_spec(name, source_path=None, source_prefix=None):
    spec = get_dataset_spec(name, source_path, source_prefix)
    if spec is None:
        raise ConfigError(
            f"dataset '{name}' is not registered (known: {', '.join(sorted(DATASETS))}); "
            f"for your own LETTER-format data set --source_path=<folder with {name}.inter.json and {name}.item.json>"
        )
    return spec
