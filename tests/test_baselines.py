"""Fine-tuning baselines (DPO, S-DPO, SPRec, IPA, PPO, GRPO): formulas, rollouts and steps on a toy problem (tiny
T5 + trie of 12 items, no RecBole, tests/finetune_toys.py) with frozen references. Config errors, policy details and
a 1-epoch run of each method through the CLI: tests/test_baselines_checks.py."""
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from finetune_toys import N_ITEMS, ToyGR, bare, log_probs, same, snapshot, toy_batch
from recbole_gflowgr.finetune.common import (
    disable_dropout, pair_loss, policy_and_reference, policy_samples, preference_loss, sample_items, top_items,
    uniform_negatives,
)
from recbole_gflowgr.finetune.grpo import group_advantages, k3_kl
from recbole_gflowgr.finetune.ppo import gae
from recbole_gflowgr.model.beam_search import constrained_beam_search, exhaustive_log_probs


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
