"""Dataset registry and converters to RecBole atomic files."""
from recbole_gflowgr.data.convert import prepare_dataset, read_item_text  # noqa: F401
from recbole_gflowgr.data.registry import DATASETS, dataset_settings, get_dataset_spec  # noqa: F401
