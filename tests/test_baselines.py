"""Fine-tuning baselines (DPO, S-DPO, SPRec, IPA, PPO, GRPO): formulas, steps on a toy problem (tiny T5 + trie of
12 items, no RecBole), frozen references, config errors, and a 1-epoch run of each method through the CLI."""
import glob
import json
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

from conftest import REPO
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.finetune.common import (
    disable_dropout, pair_loss, policy_and_reference, policy_samples, preference_loss, sample_items, top_items,
    uniform_negatives,
)
from recbole_gflowgr.finetune.dpo import DPOTrainer
from recbole_gflowgr.finetune.grpo import GRPOTrainer, group_advantages, k3_kl
from recbole_gflowgr.finetune.ipa import IPATrainer
from recbole_gflowgr.finetune.ppo import PPOTrainer, gae
from recbole_gflowgr.finetune.sdpo import SDPOTrainer
from recbole_gflowgr.finetune.sprec import SPRecTrainer
from recbole_gflowgr.model.beam_search import (
    SemanticIDTrie, constrained_beam_search, exhaustive_log_probs, sequence_log_probs,
)
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


# ----- formulas ----------------------------------------------------------------------------------------------
def test_preference_loss_is_dpo_for_one_negative_and_softmax_dpo_for_several():
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(5, generator=g), torch.randn(5, 3, generator=g)
    dpo = -torch.nn.functional.logsigmoid(0.5 * (c - r[:, 0]))
    assert torch.allclose(preference_loss(c, r[:, 0], 0.5), dpo)
    sdpo = -torch.log(torch.sigmoid(-torch.log(torch.exp(0.5 * (r - c.unsqueeze(1))).sum(1))))
    assert torch.allclose(preference_loss(c, r, 0.5), sdpo, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(2, 6), st.integers(0, 10_000))
@example(5, 2, 519)  # near-tied pair (.9820 apart by ~1e-3): float32 left its group 1e-5 off zero mean
def test_group_advantages_have_zero_mean_per_group(B, G, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (B, G), generator=g).float() * torch.rand(B, G, generator=g)  # ties and constant groups
    adv = group_advantages(rewards)
    assert torch.allclose(adv.mean(1), torch.zeros(B), atol=1e-6)
    std = rewards.std(1, unbiased=False)
    assert torch.allclose(adv.std(1, unbiased=False), std / (std + 1e-4), atol=1e-4)  # unit std up to the eps
    assert torch.all(adv[std == 0] == 0)


def test_k3_kl_is_nonnegative_and_zero_only_at_equality():
    logp, ref = torch.randn(100), torch.randn(100)
    assert torch.all(k3_kl(logp, ref) >= 0) and torch.all(k3_kl(logp, logp) == 0)


def test_gae_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    adv, ret = gae(rewards, values, 0.9, 0.8)
    for n in range(4):
        for t in range(3):
            want = 0.0
            for k in range(t, 3):
                nxt = values[n, k + 1] if k + 1 < 3 else 0.0
                want += (0.9 * 0.8) ** (k - t) * (rewards[n, k] + 0.9 * nxt - values[n, k])
            assert abs(float(adv[n, t]) - float(want)) < 1e-5
    assert torch.allclose(ret, adv + values)


def test_uniform_negatives_avoid_the_positive_the_history_and_padding():
    batch = toy_batch(B=8)
    seen = set()
    for seed in range(20):
        neg = uniform_negatives(batch["item_id_list"], batch["item_id"], N_ITEMS + 1, 3, torch.Generator().manual_seed(seed))
        for b in range(8):
            row = neg[b].tolist()
            assert len(set(row)) == 3 and 0 not in row and batch["item_id"][b].item() not in row
            assert not set(row) & set(batch["item_id_list"][b].tolist())
        seen |= set(neg[0].tolist())
    assert seen == set(range(1, N_ITEMS + 1)) - {batch["item_id"][0].item()} - set(batch["item_id_list"][0].tolist())


def test_policy_and_reference_per_length_group_equal_the_whole_batch():
    """Grouped by history length (length_buckets > 1): the same log-probs, per-step log-probs, decoder states and
    policy gradients, in batch order."""
    model, ref = ToyGR(seed=1).eval(), ToyGR(seed=2).t5.eval()
    batch = toy_batch(B=7, seed=3)
    items = torch.randint(1, N_ITEMS + 1, (7, 3), generator=torch.Generator().manual_seed(4))
    out = {}
    for buckets in (1, 3):
        model.length_buckets = buckets
        model.zero_grad()
        logp, ref_logp, hidden = policy_and_reference(model, ref, batch, items, steps=True, hidden=True)
        (logp.sum() + hidden.square().mean()).backward()
        out[buckets] = [logp.detach(), ref_logp, hidden.detach()] + [p.grad.clone() for p in model.t5.parameters()
                                                                     if p.grad is not None]
    assert len(out[1]) == len(out[3]) > 3
    for a, b in zip(out[1], out[3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ----- rollouts ----------------------------------------------------------------------------------------------
def test_policy_samples_per_length_group_are_in_batch_order():
    """Sampled per history-length group, each user's samples and their step log-probs come back in its row: the
    log-probs are the teacher-forced ones of that user's history."""
    model = ToyGR(seed=1).eval()
    model.length_buckets = 3
    batch = toy_batch(B=7, seed=5)
    items, steps = policy_samples(model, batch, 4, generator=torch.Generator().manual_seed(0))  # (7, 4), (7, 4, 3)
    assert items.shape == (7, 4) and steps.shape == (7, 4, 3) and items.min() >= 1 and items.max() <= N_ITEMS
    with torch.no_grad():
        model.length_buckets = 1
        want = policy_and_reference(model, None, batch, items, steps=True)[0]
    torch.testing.assert_close(steps, want, atol=1e-5, rtol=1e-4)


def test_sampler_follows_the_constrained_policy():
    model = ToyGR(seed=1).eval()
    batch = toy_batch(B=3)
    ids, mask = model.encoder_inputs(batch)
    items, steps = sample_items(model.t5, ids, mask, model.trie, 5, generator=torch.Generator().manual_seed(0))
    assert items.shape == (3, 5) and steps.shape == (3, 5, 3) and items.min() >= 1 and items.max() <= N_ITEMS
    with torch.no_grad():  # temperature 1: the sampler's step log-probs are the teacher-forced ones
        want = policy_and_reference(model, model.t5, batch, items, steps=True)[0]
    assert torch.allclose(steps, want, atol=1e-5)
    # empirical frequencies of 4000 samples for one user vs the exact item distribution
    one = {k: v[:1] for k, v in batch.items()}
    ids, mask = model.encoder_inputs(one)
    items, _ = sample_items(model.t5, ids, mask, model.trie, 4000, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(items[0] - 1, minlength=N_ITEMS).float() / 4000
    exact = exhaustive_log_probs(model.t5, ids, mask, model.trie)[0].exp()
    assert torch.allclose(exact.sum(), torch.tensor(1.0), atol=1e-5)
    assert 0.5 * (freq - exact).abs().sum() < 0.05
    # a low temperature concentrates the samples on the most likely item
    cold, _ = sample_items(model.t5, ids, mask, model.trie, 50, temperature=0.01, generator=torch.Generator().manual_seed(2))
    assert (cold[0] == exact.argmax() + 1).float().mean() > 0.9


def test_top_items_are_the_beams_without_the_excluded_item():
    model = ToyGR(seed=2).eval()
    batch = toy_batch(B=4)
    ids, mask = model.encoder_inputs(batch)
    beams = constrained_beam_search(model.t5, ids, mask, model.trie, 4)[0] + 1  # (B, 4)
    exclude = beams[:, 1]
    top = top_items(model.t5, ids, mask, model.trie, 3, exclude=exclude)
    assert torch.equal(top, beams[:, [0, 2, 3]])


# ----- preference methods on the toy problem -----------------------------------------------------------------
def pairs_of(trainer, batch):
    """(chosen (B',), rejected (B', K), rows) as the method draws them (generator reseeded: each call draws the same);
    ``rows`` = the batch rows they belong to (None = all)."""
    model = trainer.model
    trainer.generator.manual_seed(0)
    name = trainer.config["finetune"]
    if name in ("dpo", "s-dpo"):
        k = 1 if name == "dpo" else trainer.n_neg
        return batch["item_id"], uniform_negatives(batch["item_id_list"], batch["item_id"], model.n_items, k,
                                                   trainer.generator), None
    if name == "sprec":
        return batch["item_id"], trainer.self_play_negatives(batch), None
    chosen, rejected, valid, reward = trainer.preference_pairs(batch)
    assert torch.all(reward.gather(1, (reward.argmax(1, keepdim=True))).squeeze(1) == reward.max(1).values)
    return chosen[valid], rejected[valid].unsqueeze(1), torch.nonzero(valid).squeeze(1)


@pytest.mark.parametrize("method", ["dpo", "s-dpo", "sprec", "ipa"])
def test_preference_methods_raise_chosen_over_rejected_with_a_frozen_reference(method):
    model = ToyGR(seed=3)
    batch = toy_batch(B=8, seed=1)
    trainer = bare(method, model, lr=0.01, ipa_ntp_weight=0.0, sprec_sft_phase=False, dpo_fixed_negatives=False)
    trainer.begin_epoch(None, 0)
    if method == "sprec":
        trainer.enter_phase("dpo")
    ref, ref_state = trainer.ref_t5, snapshot(trainer.ref_t5)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p is not q for p, q in zip(ref.parameters(), model.t5.parameters()))
    chosen, rejected, rows = pairs_of(trainer, batch)
    ids, mask = model.encoder_inputs(batch)
    if method == "sprec":  # rejected = the SFT model's top item other than the positive
        beams = constrained_beam_search(model.t5, ids, mask, model.trie, 2)[0] + 1
        assert torch.equal(rejected[:, 0], torch.where(beams[:, 0] == chosen, beams[:, 1], beams[:, 0]))
    if method == "ipa":  # chosen / rejected = the beams the reward model scores best / worst (FakeScorer: by id)
        beams = top_items(model.t5, ids, mask, model.trie, trainer.beams)[rows]
        assert torch.equal(chosen, beams.max(1).values) and torch.equal(rejected[:, 0], beams.min(1).values)
    items = torch.cat([chosen.unsqueeze(1), rejected], dim=1)  # (B', 1 + K)

    def margin():  # policy log pi(chosen) - log pi(rejected), mean
        with torch.no_grad():
            lp = policy_and_reference(model.eval(), model.t5, batch, items, rows)[0]
        return float((lp[:, :1] - lp[:, 1:]).mean())

    def fixed_pair_loss():  # the (S-)DPO loss of the initial pairs
        with torch.no_grad():
            return float(pair_loss(model.eval(), ref, batch, chosen, rejected, trainer.beta, rows)[0].mean())

    start_margin, start_loss = margin(), fixed_pair_loss()
    losses = []
    for step in range(12):
        model.train()
        trainer.generator.manual_seed(0)
        parts = getattr(trainer, trainer.loss_name)(batch)
        loss = sum(parts) if isinstance(parts, tuple) else parts
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        losses.append(loss.item())
        if step == 0:  # one preference step already raises the chosen item over the rejected one
            assert margin() > start_margin
    assert margin() > start_margin and fixed_pair_loss() < start_loss and losses[-1] < losses[0]
    assert trainer.ref_t5 is ref and same(ref, ref_state)
    assert set(trainer.stats) >= {"margin", "accuracy"} and trainer.n_recorded == 12


def test_sprec_round_snapshot_and_reference():
    model = ToyGR(seed=4)
    trainer = bare("sprec", model)
    first = trainer.ref_t5
    trainer.begin_epoch(None, 0)
    loader = trainer.wrap_data([toy_batch(B=4, seed=s) for s in range(2)])
    assert len(loader) == 4
    phases, batches = [], 0
    for batch in loader:
        sft, dpo = trainer.sprec_loss(batch)
        phases.append(trainer.phase)
        assert (float(dpo) == 0.0) if trainer.phase == "sft" else (float(sft) == 0.0)
        (sft + dpo).backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        batches += 1
    assert phases == ["sft", "sft", "dpo", "dpo"]
    # the DPO reference is the model after the round's SFT pass; the snapshot is the round-start model
    assert trainer.ref_t5 is not first and not any(p.requires_grad for p in trainer.ref_t5.parameters())
    assert same(trainer.snapshot_t5, snapshot(first))


# ----- policy-gradient methods -------------------------------------------------------------------------------
def test_disable_dropout_makes_train_mode_deterministic():
    model = ToyGR(seed=5, dropout=0.5)
    batch, items = toy_batch(B=4), torch.arange(1, 4).expand(4, 3)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(policy_and_reference(model, model.t5, batch, items)[0],
                                  policy_and_reference(model, model.t5, batch, items)[0])
    disable_dropout(model)
    model.train()
    with torch.no_grad():
        train = policy_and_reference(model, model.t5, batch, items)[0]
    assert torch.allclose(train, log_probs(model, batch, items), atol=1e-6)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_policy_gradient_objective_decreases_on_a_fixed_rollout(method):
    model = ToyGR(seed=5, dropout=0.1)  # the trainer removes dropout: before any update pi = pi_old = pi_ref
    batch = toy_batch(B=6, seed=2)
    trainer = bare(method, model, lr=0.003)
    ref_state = snapshot(trainer.ref_t5)
    model.train()
    rollout = trainer.rollout(batch)
    if method == "grpo":
        assert torch.allclose(rollout["adv"].mean(1), torch.zeros(6), atol=1e-5)
    first = trainer.objective(batch, rollout)
    assert abs(rollout["kl"]) < 1e-5
    losses = []
    for _ in range(8):
        parts = trainer.objective(batch, rollout)
        losses.append([p.item() for p in parts])
        trainer.optimizer.zero_grad()
        sum(parts).backward()
        trainer.optimizer.step()
    assert abs(losses[0][0] - first[0].item()) < 1e-6  # pi_old = the first call's policy: ratio 1, no update yet
    assert losses[-1][0] < losses[0][0]  # the clipped surrogate improves
    if method == "ppo":
        assert losses[-1][1] < losses[0][1]  # the value head fits the returns
        assert any(k.startswith("ppo_value_head.") for k in model.state_dict())
    assert same(trainer.ref_t5, ref_state)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_policy_gradient_with_hit_reward_raises_the_positive(method):
    model = ToyGR(seed=6)
    batch = toy_batch(B=6, seed=3)
    extra = {"ppo_reward": "hit", "ppo_samples": 8} if method == "ppo" else {"grpo_reward": "hit", "grpo_iterations": 2}
    trainer = bare(method, model, lr=0.02, **extra)
    ref_state = snapshot(trainer.ref_t5)
    pos = batch["item_id"].unsqueeze(1)
    before = log_probs(model, batch, pos).mean()
    for _ in range(10):
        model.train()
        parts = getattr(trainer, trainer.loss_name)(batch)  # the first updates are taken inside (several per rollout)
        sum(parts).backward()
        trainer.optimizer.step()
    assert log_probs(model, batch, pos).mean() > before + 0.1
    assert same(trainer.ref_t5, ref_state) and set(trainer.stats) >= {"reward", "hit", "kl"}


# ----- config errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,key,value", [
    ("dpo", "dpo_beta", 0), ("dpo", "dpo_beta", -1.0), ("s-dpo", "sdpo_beta", 0.0), ("s-dpo", "sdpo_n_neg", 0),
    ("s-dpo", "sdpo_n_neg", 99), ("sprec", "sprec_beta", -0.1), ("sprec", "sprec_sft_phase", "yes"),
    ("ipa", "ipa_beams", 1), ("ipa", "ipa_beams", 99), ("ipa", "ipa_dpo_ratio", 0.0), ("ipa", "ipa_lambda", -1),
    ("ppo", "ppo_clip", 0), ("ppo", "ppo_gamma", 1.5), ("ppo", "ppo_lambda", -0.1), ("ppo", "ppo_epochs", 0),
    ("ppo", "ppo_reward", "ndcg"), ("ppo", "ppo_temperature", 0), ("grpo", "grpo_group_size", 1),
    ("grpo", "grpo_clip", -0.2), ("grpo", "grpo_beta", -1), ("grpo", "grpo_iterations", 1.5),
])
def test_impossible_hyperparameters_are_clear_errors(method, key, value):
    with pytest.raises(ConfigError, match=f"^{key}=") as err:
        bare(method, ToyGR(), **{key: value})
    assert "\n" not in str(err.value)


def test_every_yaml_key_is_commented_and_prefixed():
    prefixes = {"dpo": "dpo_", "sdpo": "sdpo_", "sprec": "sprec_", "ipa": "ipa_", "ppo": "ppo_", "grpo": "grpo_"}
    for name, prefix in prefixes.items():
        with open(os.path.join(FINETUNE_YAML, f"{name}.yaml")) as f:
            lines = [line for line in f if line.strip() and not line.startswith("#")]
        assert lines and all(line.startswith(prefix) and "# (" in line for line in lines), name


def test_dpo_fixed_negatives_are_drawn_once_per_example():
    from types import SimpleNamespace

    from recbole.data.interaction import Interaction

    from recbole_gflowgr.finetune.dpo import EXAMPLE

    model = ToyGR(seed=3)
    data = toy_batch(B=20, seed=4)
    train_data = SimpleNamespace(_dataset=SimpleNamespace(inter_feat=Interaction(dict(data))))
    trainer = bare("dpo", model)
    assert trainer.fixed is True  # the default: vanilla DPO's fixed preference data
    drawn = []
    for epoch in range(3):  # a new random stream each epoch, and the rows in another order
        trainer.begin_epoch(train_data, epoch)
        trainer.generator.manual_seed(100 + epoch)
        order = torch.randperm(20, generator=torch.Generator().manual_seed(epoch))[:8]
        batch = train_data._dataset.inter_feat[order]
        seen = {}

        def pair_loss_spy(model_, ref, interaction, pos, neg, beta, rows=None):
            seen["neg"] = neg
            return torch.zeros(pos.shape[0], requires_grad=True), {}

        import recbole_gflowgr.finetune.dpo as dpo_module

        original, dpo_module.pair_loss = dpo_module.pair_loss, pair_loss_spy
        try:
            trainer.dpo_loss(batch)
        finally:
            dpo_module.pair_loss = original
        assert torch.equal(batch[EXAMPLE], order)
        drawn.append(dict(zip(order.tolist(), seen["neg"][:, 0].tolist())))
    common = set(drawn[0]) & set(drawn[1]) | set(drawn[0]) & set(drawn[2])
    assert common and all(d[i] == drawn[0][i] for d in drawn[1:] for i in common if i in d)  # same example, same y-
    neg = trainer.negatives[:, 0]  # (20,) one per example: never the positive, the history or padding
    assert neg.shape == (20,) and (neg >= 1).all() and (neg != data["item_id"]).all()
    assert not (neg.unsqueeze(1) == data["item_id_list"]).any()
    other = bare("dpo", ToyGR(seed=3))  # a resumed run draws the same table (seeded by `seed` alone)
    other.begin_epoch(SimpleNamespace(_dataset=SimpleNamespace(inter_feat=Interaction(dict(data)))), 0)
    assert torch.equal(other.negatives, trainer.negatives)


def test_rl_rewards_count_only_semantic_levels():
    from recbole_gflowgr.finetune.common import item_rewards

    model = ToyGR()  # IDs (i//4 % 3, i//2 % 2, i % 2): the last column plays the disambiguation index
    batch = {"item_id_list": torch.tensor([[3, 0]]), "item_id_len": torch.tensor([1]), "item_length": torch.tensor([1]),
             "item_id": torch.tensor([1])}  # positive: trie item 0, codes (0, 0, 0)
    items = torch.tensor([[1, 7, 3, 2]])  # trie items 0, 6 (1, 1, 0), 2 (0, 1, 0), 1 (0, 0, 1)
    config = defaults(gflowgr_reward_cm=False, gflowgr_reward_aug=False)
    reward = item_rewards(model, None, batch, items, config)[0]
    # R_tok over the 2 semantic levels: item 6 shares only the last column with the positive -> 0 (floored at eps)
    assert reward.tolist() == pytest.approx([1.0, 1e-6, 0.5, 1.0])


def test_baselines_disable_the_policy_dropout_by_default():
    model = ToyGR(seed=0, dropout=0.3)
    bare("dpo", model)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    kept = ToyGR(seed=0, dropout=0.3)
    bare("dpo", kept, finetune_disable_dropout=False)
    assert any(m.p == 0.3 for m in kept.modules() if isinstance(m, nn.Dropout))


def test_fine_tuning_log_probs_are_sft_softmax_at_the_model_temperature():
    # LETTER trains softmax(logits / tau): the fine-tuning policy must read that distribution over the allowed children
    model = ToyGR(seed=2).eval()
    model.temperature = 0.7
    batch = toy_batch(B=4, seed=5)
    items = torch.stack([batch["item_id"], batch["item_id"] % N_ITEMS + 1], 1)  # (B, 2)
    with torch.no_grad():
        steps = policy_and_reference(model, None, batch, items, steps=True)[0]  # (B, 2, L)
        ids, mask = model.encoder_inputs(batch)
        codes = model.target_tokens(items)  # (B, 2, L)
        for m in range(2):
            dec_in = model.t5._shift_right(codes[:, m])
            logits = model.t5(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits / 0.7  # (B, L, V)
            nodes = model.trie.item_nodes[items[:, m] - 1]  # (B, L)
            for t in range(3):
                children = model.trie.children(t, nodes[:, t])  # (B, W)
                lo = model.trie.lo[t]
                allowed = logits[:, t, lo:lo + model.trie.width[t]].masked_fill(children < 0, float("-inf"))
                want = torch.log_softmax(allowed, 1).gather(1, (codes[:, m, t] - lo).unsqueeze(1)).squeeze(1)
                assert torch.allclose(steps[:, m, t], want, atol=1e-5)
        at_one = sequence_log_probs(model.t5, ids, mask, model.trie, items - 1)  # tau = 1: another distribution
        assert not torch.allclose(steps.sum(-1), at_one, atol=1e-4)
        beams, scores = constrained_beam_search(model.t5, ids, mask, model.trie, 3, temperature=0.7)
        again = sequence_log_probs(model.t5, ids, mask, model.trie, beams, temperature=0.7)
        assert torch.allclose(scores, again, atol=1e-5)  # beam scores = the same policy's teacher-forced log-probs


# ----- one epoch of each method through the CLI ------------------------------------------------------------
@pytest.mark.parametrize("method", ["sft-continued", "dpo", "s-dpo", "sprec", "ipa", "ppo", "grpo"])
def test_one_epoch_of_each_method_writes_a_result_row(method, monkeypatch):
    from gr_helpers import TINY_GR, patch_gr

    import run_recbole_gflowgr

    args = ["--model=TIGER", f"--finetune={method}", f"--config_files={os.path.join(REPO, 'properties', 'small.yaml')}",
            "--grpo_group_size=4", "--ipa_beams=4"] + patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main(args) == 0
    with open("res/tiny.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["finetune"] for r in rows] == ["sft", method]  # SFT trained (and cached) first, then fine-tuned
    row = rows[-1]
    assert row["epochs"] == 1 and row["pretrained"] and os.path.isfile(row["pretrained"])
    assert all(0.0 <= v <= 1.0 for v in row["test"].values())
    assert "sft" not in row["checkpoint"] and os.path.isfile(row["checkpoint"])
    state = torch.load(row["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("ppo_value_head.") for k in state) == (method == "ppo")


def test_impossible_hyperparameter_fails_before_any_training(capsys):
    from test_foundation import tiny_letter

    import run_recbole_gflowgr

    src, _, _ = tiny_letter()
    code = run_recbole_gflowgr.main(["--model=TIGER", "--dataset=tiny", f"--source_path={src}", "--finetune=grpo",
                                     "--grpo_group_size=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: grpo_group_size=1: expected an int >= 2") and "\n" not in err
    assert not os.path.exists("saved")  # no SFT was trained


def test_validated_values_do_not_shadow_recbole_trainer_attributes():
    import inspect
    import re

    from recbole.trainer import trainer as recbole_trainer

    source = inspect.getsource(recbole_trainer.Trainer) + inspect.getsource(recbole_trainer.AbstractTrainer)
    taken = set(re.findall(r"self\.(\w+)\s*=", source)) | set(dir(recbole_trainer.Trainer))
    for method, cls in TRAINERS.items():
        assert not set(cls.check_config(defaults(finetune=method))) & taken, method

