"""Fine-tuning methods of the generative models, selected by the config key ``finetune`` (``--finetune=...``)."""
import importlib

from recbole_gflowgr.errors import ConfigError

# method name (CLI spelling) -> "module:Trainer class"
METHODS = {
    "sft": "recbole_gflowgr.trainer:GRTrainer",
    "gflowgr-tb": "recbole_gflowgr.finetune.gflowgr.trainer:GFlowGRTrainer",
    "gflowgr-db": "recbole_gflowgr.finetune.gflowgr.trainer:GFlowGRTrainer",
    "gflowgr-subtb": "recbole_gflowgr.finetune.gflowgr.trainer:GFlowGRTrainer",
    "dpo": "recbole_gflowgr.finetune.dpo:DPOTrainer",
    "s-dpo": "recbole_gflowgr.finetune.sdpo:SDPOTrainer",
    "sprec": "recbole_gflowgr.finetune.sprec:SPRecTrainer",
    "ipa": "recbole_gflowgr.finetune.ipa:IPATrainer",
    "ppo": "recbole_gflowgr.finetune.ppo:PPOTrainer",
    "grpo": "recbole_gflowgr.finetune.grpo:GRPOTrainer",
}


def get_finetune_trainer(name):
    if name not in METHODS:
        raise ConfigError(f"unknown fine-tuning method finetune='{name}': use one of {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
