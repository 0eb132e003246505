"""Fine-tuning methods of the generative models, selected by the config key ``finetune`` (``--finetune=...``)."""
import importlib

from recbole_gflowgr.foundation.errors import ConfigError

# method name (CLI spelling) -> "module:Trainer class"
METHODS = {
    "sft": "recbole_gflowgr.trainer.base:GRTrainer",
    # the control of every fine-tuning method: SFT loss only, from the same SFT checkpoint with finetune_epochs,
    # finetune_learning_rate, batches and early stopping (quick_start.run switches them for any method but sft)
    "sft-continued": "recbole_gflowgr.trainer.base:GRTrainer",
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


FINETUNE_HEADS = ("gflow_heads.", "ppo_value_head.")  # state-dict prefixes of heads that fine-tuning adds
CONTROL = "sft-continued"
# config-key prefixes read by one method only (finetune_* keys are shared by every fine-tuning method)
METHOD_PREFIXES = ("gflowgr_", "dpo_", "sdpo_", "sprec_", "ipa_", "ppo_", "grpo_")


def control_keys(values):
    """``values`` (a dict of config keys) without the keys that only a fine-tuning method reads: what the control
    ``sft-continued`` depends on (the backbone's keys and the shared ``finetune_*`` keys), so that an ablation's or a
    sweep's variants share one control run per seed."""
    return {k: v for k, v in values.items() if not k.startswith(METHOD_PREFIXES)}


def get_finetune_trainer(name):
    if name not in METHODS:
        raise ConfigError(f"unknown fine-tuning method finetune='{name}': use one of {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
