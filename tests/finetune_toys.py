"""Toy problem shared by the fine-tuning baseline tests: a tiny T5 + a trie of 12 items, no RecBole, and bare
trainers of each method on it."""
import glob
import os
import sys

import numpy as np
import torch
import yaml
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

from conftest import REPO
from recbole_gflowgr.finetune.common import policy_and_reference
from recbole_gflowgr.finetune.dpo import DPOTrainer
from recbole_gflowgr.finetune.grpo import GRPOTrainer
from recbole_gflowgr.finetune.ipa import IPATrainer
from recbole_gflowgr.finetune.ppo import PPOTrainer
from recbole_gflowgr.finetune.sdpo import SDPOTrainer
from recbole_gflowgr.finetune.sprec import SPRecTrainer
from recbole_gflowgr.model.beam_search import SemanticIDTrie
from recbole_gflowgr.model.tiger import TIGER

N_ITEMS = 12  # real items; RecBole ids 1..12, 0 = padding
OFFSETS = np.array([2, 5, 7])  # token ranges of the 3 levels (sizes 3, 2, 2): vocabulary of 9 tokens
FINETUNE_YAML = os.path.join(REPO, "recbole_gflowgr", "properties", "finetune")
sys.path.insert(0, REPO)  # run_recbole_gflowgr.py
TRAINERS = {"dpo": DPOTrainer, "s-dpo": SDPOTrainer, "sprec": SPRecTrainer, "ipa": IPATrainer, "ppo": PPOTrainer,
            "grpo": GRPOTrainer}



def toy_codes(n):
    return np.array([[i // 4 % 3, (i // 2) % 2, i % 2] for i in range(n)], dtype=np.int64)  # (n, 3), distinct


class ToyGR(nn.Module):
    """TIGER's interface (its own methods) on a tiny T5 and a 12-item trie, without RecBole."""

    ITEM_SEQ, ITEM_SEQ_LEN, POS_ITEM_ID, USER_ID = "item_id_list", "item_length", "item_id", "user_id"
    pad_to = None
    encoder_inputs, target_tokens, token_logits = TIGER.encoder_inputs, TIGER.target_tokens, TIGER.token_logits
    sft_loss, calculate_loss, length_groups = TIGER.sft_loss, TIGER.calculate_loss, TIGER.length_groups

    def __init__(self, seed=0, dropout=0.0):
        super().__init__()
        tokens = torch.zeros(N_ITEMS + 1, 3, dtype=torch.long)
        tokens[1:] = torch.as_tensor(toy_codes(N_ITEMS) + OFFSETS)
        self.register_buffer("item_tokens", tokens, persistent=False)  # (n_items, L)
        self.trie = SemanticIDTrie(tokens[1:])
        torch.manual_seed(seed)
        self.t5 = T5ForConditionalGeneration(T5Config(
            vocab_size=9, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
            dropout_rate=dropout, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
        self.n_items, self.temperature, self.user_buckets, self.length_buckets = N_ITEMS + 1, 1.0, 0, 1
        self.code_len = 3


def toy_batch(B=6, seed=0):
    """A dict interaction: histories (B, 5) left-aligned and zero-padded, lengths (B,), next items (B,)."""
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(N_ITEMS, generator=g)[:6] + 1 for _ in range(B)])  # (B, 6)
    lens = torch.randint(1, 6, (B,), generator=g)
    seq = perms[:, :5] * (torch.arange(5) < lens.unsqueeze(1))
    return {"item_id_list": seq, "item_length": lens, "item_id": perms.gather(1, lens.unsqueeze(1)).squeeze(1)}


class FakeScorer:
    """Collaborative-model stand-in: user-independent scores in [0, 1], item i -> (i - 1) / (n - 2)."""

    def __init__(self, n_items):
        self.n_items = n_items
        self.table = torch.cat([torch.zeros(1), torch.linspace(0, 1, n_items - 1)])  # (n_items,)

    def score(self, item_seq, item_seq_len, candidates=None, pos=None):
        scores = self.table.to(item_seq.device).expand(item_seq.shape[0], -1).clone()  # (B, n_items)
        return scores if candidates is None else scores.gather(1, candidates)


def defaults(**overrides):
    """Every fine-tuning yaml's defaults (the files config.py auto-loads), plus a seed and the overrides."""
    config = {"seed": 0}
    for path in sorted(glob.glob(os.path.join(FINETUNE_YAML, "*.yaml"))):
        with open(path) as f:
            config.update(yaml.safe_load(f))
    config.update(overrides)
    return config


def bare(method, model, lr=0.01, **overrides):
    """The method's trainer with its own check/attach/init code but without RecBole's Trainer.__init__."""
    config = defaults(finetune=method, **overrides)
    trainer = TRAINERS[method].__new__(TRAINERS[method])
    trainer.config, trainer.model = config, model
    trainer.prepare(config, model)
    trainer.init_state(config, model, "cpu")
    trainer.scorer = FakeScorer(model.n_items)
    trainer.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    trainer.clip_grad_norm = None
    return trainer


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(module, state):
    return all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


def log_probs(model, batch, items):
    """(B, M) policy log-probs of RecBole items (B, M), without gradient, eval mode."""
    with torch.no_grad():
        return policy_and_reference(model.eval(), model.t5, batch, items)[0]


