"""``get_model`` / ``get_trainer``: this package's classes first, RecBole's as fallback."""
from recbole_gflowgr import OUR_MODELS  # noqa: F401 (re-exported: its old home)
from recbole_gflowgr.model import get_model, recbole_model_names  # noqa: F401 (re-exported)


def get_trainer(model_type, model_name, config=None):
    """Our trainer for our models (by fine-tuning method), RecBole's otherwise, with checkpoint loading made safe
    for torch >= 2.6 (see ``trainer.CheckpointMixin``)."""
    from recbole.utils import get_trainer as recbole_get_trainer

    from recbole_gflowgr.trainer.base import with_checkpoint_fix

    if model_name in OUR_MODELS:
        from recbole_gflowgr.finetune import get_finetune_trainer

        return get_finetune_trainer(config["finetune"] if config is not None else "sft")
    return with_checkpoint_fix(recbole_get_trainer(model_type, model_name))
