"""Shared pieces of the fine-tuning baselines (DPO, S-DPO, SPRec, IPA, PPO, GRPO).

Items are RecBole item ids (>= 1) everywhere in this module; the trie index of item ``i`` is ``i - 1``.

* the policy: the trie-constrained next-token distribution of the backbone's T5 (``model/beam_search.py``) at the
  model's SFT temperature (softmax(logits / ``model.temperature``): what SFT trains, LETTER's tau), so an
  item's log-probability is the sum of ``L`` constrained log-softmax terms and the probabilities of all items sum
  to 1; :func:`policy_and_reference` (teacher-forced log-probs of the policy, differentiable, and of the frozen
  reference ``pi_ref``, :func:`freeze`: a deep copy of the T5 taken after the SFT weights are loaded),
  :func:`sample_items` (ancestral sampling, for PPO/GRPO rollouts), :func:`top_items` (beam search, SPRec/IPA);
* :func:`preference_loss`: DPO (Rafailov et al. 2023) and its softmax form S-DPO (Chen et al. 2024);
* rewards: :func:`ensure_scorer` (the collaborative SASRec of GFlowGR, loaded lazily once per trainer) and
  :func:`item_rewards` (GFlowGR's comprehensive reward, or hit = item is the observed next item);
* :func:`clipped_surrogate` (PPO, Schulman et al. 2017) and :func:`optimisation_steps` (several updates per rollout);
* :class:`BaselineTrainer`: the RecBole trainer that every baseline subclasses.
"""
import copy
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.nn.utils import clip_grad_norm_

from recbole_gflowgr.finetune.gflowgr.reward import comprehensive_reward
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.trainer import distributed
from recbole_gflowgr.model.beam_search import (
    _level_logits, constrained_beam_search, constrained_log_softmax, encode, sequence_log_probs,
)
from recbole_gflowgr.model.decoder_steps import GroupedT5Stepper
from recbole_gflowgr.trainer.base import GRTrainer
from recbole_gflowgr.trainer.resume import preserved_rng

REWARDS = ("comprehensive", "hit")
CM_SCORES = ("percentile", "minmax")  # model.collaborative.CollaborativeScorer's normalisations (gflowgr_cm_score)


# ----- config checks -----------------------------------------------------------------------------------------
def require(config, key, ok, must):
    """Raise a one-line ConfigError naming ``key`` unless ``ok(config[key])``; returns the value."""
    value = config[key]
    try:
        good = value is not None and bool(ok(value))
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"{key}={value!r} {must}")
    return value


def require_choice(config, key, options):
    return require(config, key, lambda v: v in options, f"is not one of {', '.join(options)}")


# ----- models ------------------------------------------------------------------------------------------------
def freeze(module):
    """A frozen deep copy: eval mode, ``requires_grad`` False, never updated (the reference policy)."""
    ref = copy.deepcopy(module).eval()
    for m in ref.modules():  # compile: True binds `forward` to the original module (fast_t5.compile_t5): run eager
        m.__dict__.pop("forward", None)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def disable_dropout(module):
    """Set every dropout probability of ``module`` to 0 (on-policy ratios are exactly 1 before the first update):
    ``nn.Dropout`` modules and float ``dropout`` attributes (HF attention layers apply functional dropout)."""
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0


@contextmanager
def eval_mode(module):
    """Temporarily put ``module`` in eval mode (generation during training: no dropout)."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def per_length_group(model, interaction, fn):
    """``fn(rows)``, a tuple of (B', ...) tensors (or None) for the batch rows ``rows``, run per history-length group
    (the model's ``length_groups``, as SFT and GFlowGR do) and put back in batch order; one call ``fn(None)`` on the
    whole batch when the model does not group."""
    groups = [g for g in model.length_groups(interaction) if g is not None]
    if not groups:
        return fn(None)
    parts = [fn(g) for g in groups]
    back = torch.argsort(torch.cat(groups))  # (B,) batch row -> position in the grouped order
    return tuple(None if part[0] is None else torch.cat(part)[back] for part in zip(*parts))


def policy_and_reference(model, ref_t5, interaction, items, rows=None, steps=False, hidden=False):
    """(policy, reference) constrained log-probs of RecBole ``items`` (B, M) for the batch rows ``rows``: (B, M) each,
    or per step (B, M, L) with ``steps``; with ``hidden`` the policy's decoder states (B, M, L, d) come third
    (position t = the state that predicts token t). The policy is differentiable; the reference runs without grad
    (``ref_t5=None``: not run, None returned in its place). For the whole batch (``rows=None``) both run per
    history-length group (:func:`per_length_group`)."""
    if rows is None:
        return per_length_group(model, interaction, lambda g: _policy_and_reference(
            model, ref_t5, interaction, items if g is None else items[g], g, steps, hidden))
    return _policy_and_reference(model, ref_t5, interaction, items, rows, steps, hidden)


def _policy_and_reference(model, ref_t5, interaction, items, rows, steps, hidden):
    ids, mask = model.encoder_inputs(interaction, rows)  # (B, S)
    tau = model.temperature  # the distribution SFT trains
    out = sequence_log_probs(model.t5, None, mask, model.trie, items - 1, encoder_outputs=encode(model.t5, ids, mask),
                             return_steps=True, return_hidden=hidden, temperature=tau)  # (B, M), (B, M, L)[, (B, M, L, d)]
    i = 1 if steps else 0
    ref = None
    if ref_t5 is not None:
        with torch.no_grad():
            ref = sequence_log_probs(ref_t5, None, mask, model.trie, items - 1,
                                     encoder_outputs=encode(ref_t5, ids, mask), return_steps=True,
                                     temperature=tau)[i]  # (B, M[, L])
    return (out[i], ref, out[2]) if hidden else (out[i], ref)


# ----- candidate items ---------------------------------------------------------------------------------------
def uniform_negatives(item_seq, pos, n_items, k, generator=None):
    """(B, k) distinct items drawn uniformly among those that are neither the positive (B,) nor in the history
    (B, S) (nor the padding item 0); rows with fewer than k such items repeat their first draw."""
    keys = torch.rand(pos.shape[0], n_items, generator=generator, device=pos.device)  # (B, n_items)
    keys[:, 0] = -1.0
    keys.scatter_(1, item_seq, -1.0)
    keys.scatter_(1, pos.unsqueeze(1), -1.0)
    vals, items = keys.topk(k, dim=1)  # (B, k): top-k of i.i.d. uniform keys = uniform sample w/o replacement
    return torch.where(vals >= 0, items, items[:, :1])


@torch.no_grad()
def top_items(t5, ids, mask, trie, k, exclude=None, length_groups=1, temperature=1.0):
    """(B, k) the policy's top-k items by constrained beam search (logits / ``temperature``: pass the model's),
    skipping ``exclude`` (B,) when it is among them (the beam is one wider for that); needs ``k (+1) <= number of
    items``."""
    with eval_mode(t5):
        width = k + (exclude is not None)
        items = constrained_beam_search(t5, ids, mask, trie, width, length_groups=length_groups,
                                        temperature=temperature)[0] + 1  # (B, width)
    if exclude is None:
        return items
    drop = items == exclude.unsqueeze(1)  # (B, width)
    order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices  # kept items first, in beam order
    return items.gather(1, order)[:, :k]


@torch.no_grad()
def sample_items(t5, ids, mask, trie, n, temperature=1.0, generator=None):
    """Ancestral sampling of ``n`` items per user from the constrained policy (softmax(logits / temperature) over the
    allowed children of the prefix at each of the L levels), vectorised over the B*n rows.

    Returns (items (B, n) RecBole ids, step log-probs (B, n, L) of the sampling distribution); at the
    temperature given to ``sequence_log_probs`` they equal its steps (:func:`policy_samples` passes the model's
    temperature times the sampling temperature). Runs in eval mode (no dropout) and without gradient."""
    with eval_mode(t5):
        enc = encode(t5, ids, mask)  # (B, S, d)
        B, L = enc.shape[0], trie.L
        R = B * n
        stepper = GroupedT5Stepper(t5, enc, mask)  # rows b*n .. b*n + n - 1 belong to user b
        seq = torch.full((R, 1), t5.config.decoder_start_token_id, dtype=torch.long, device=enc.device)  # (R, 1)
        nodes = torch.zeros(R, dtype=torch.long, device=enc.device)  # (R,) prefix node ids, root first
        steps = []
        for t in range(L):
            h = stepper.step(seq)  # (R, d)
            children = trie.children(t, nodes)  # (R, W_t)
            logp = constrained_log_softmax(_level_logits(t5, trie, t, h) / temperature, children >= 0)  # (R, W_t)
            tok = torch.multinomial(logp.exp(), 1, generator=generator)  # (R, 1)
            steps.append(logp.gather(1, tok).squeeze(1))
            nodes = children.gather(1, tok).squeeze(1)  # (R,) at the last level: the item's trie index
            seq = torch.cat([seq, tok + trie.lo[t]], dim=1)  # (R, t + 2)
    return nodes.view(B, n) + 1, torch.stack(steps, dim=1).view(B, n, L)


def policy_samples(model, interaction, n, temperature=1.0, generator=None):
    """:func:`sample_items` for a batch of the model: (items (B, n), step log-probs (B, n, L)), sampled per
    history-length group (:func:`per_length_group`) from softmax(logits / (model.temperature * temperature)): the
    policy SFT trains, at the sampling temperature ``temperature`` (1 = on-policy)."""
    tau = model.temperature * temperature
    return per_length_group(model, interaction, lambda g: sample_items(
        model.t5, *model.encoder_inputs(interaction, g), model.trie, n, tau, generator))


# ----- preference losses -------------------------------------------------------------------------------------
def preference_loss(delta_chosen, delta_rejected, beta):
    """S-DPO (Chen et al., NeurIPS 2024): ``-log sigmoid(-log sum_j exp(beta * (r_j - r_c)))`` per example, with
    ``r = log pi - log pi_ref``; ``delta_chosen`` (B,), ``delta_rejected`` (B, K). With K = 1 this is DPO
    (Rafailov et al. 2023): ``-log sigmoid(beta * (r_c - r_r))``. Returns (B,)."""
    if delta_rejected.dim() == 1:
        delta_rejected = delta_rejected.unsqueeze(1)
    z = torch.logsumexp(beta * (delta_rejected - delta_chosen.unsqueeze(1)), dim=1)  # (B,)
    return -F.logsigmoid(-z)


def pair_loss(model, ref_t5, interaction, chosen, rejected, beta, rows=None):
    """(loss (B,), stats) of (S-)DPO for chosen items (B,) against rejected items (B, K) of the batch rows ``rows``."""
    items = torch.cat([chosen.unsqueeze(1), rejected.view(chosen.shape[0], -1)], dim=1)  # (B, 1 + K)
    logp, ref = policy_and_reference(model, ref_t5, interaction, items, rows)  # (B, 1 + K) each
    delta = logp - ref
    loss = preference_loss(delta[:, 0], delta[:, 1:], beta)  # (B,)
    margin = beta * (delta[:, :1] - delta[:, 1:]).detach()  # (B, K) implicit reward margins
    return loss, {"margin": float(margin.mean()), "accuracy": float((margin > 0).float().mean()),
                  "chosen_logp": float(logp[:, 0].detach().mean())}


# ----- rewards -----------------------------------------------------------------------------------------------
def ensure_scorer(trainer, train_data):
    """The collaborative model's scorer (GFlowGR's SASRec), loaded on first use by ``trainer.scorer_loader`` (the
    runtime's ``quick_start.load_scorer``, set by ``quick_start.run``) and kept as ``trainer.scorer``; shared by
    GFlowGR, IPA, PPO and GRPO."""
    if getattr(trainer, "scorer", None) is None:
        from recbole_gflowgr.data import dataset_settings

        config = trainer.config
        load_scorer = getattr(trainer, "scorer_loader", None)
        if load_scorer is None:
            raise ConfigError(f"finetune={config['finetune']} rewards with the collaborative model: set trainer.scorer "
                              "(a model.collaborative.CollaborativeScorer) or trainer.scorer_loader "
                              "(quick_start.load_scorer), or run it through quick_start.run")
        with preserved_rng():  # its random init must not shift the training stream (a resumed run loads it later)
            scorer = load_scorer(config["dataset"], dataset_settings(config), trainer.device, config_dict=config["collaborative_args"],
                                 recbole_dataset=train_data._dataset)
        scorer.mode = require_choice(config, "gflowgr_cm_score", CM_SCORES)  # percentile | minmax
        if scorer.n_items != trainer.model.n_items:
            raise ConfigError(f"the collaborative model has {scorer.n_items} items, the dataset "
                              f"{trainer.model.n_items}: delete its cache under {config['checkpoint_dir']}/collaborative")
        trainer.scorer = scorer
    return trainer.scorer


def semantic_levels(model):
    """How many leading columns of the model's item IDs are semantic levels: all but the last, the disambiguation
    index that tells items with equal codes apart (``tokenizer/semantic_ids.disambiguate``; TIGER 3 of 4, LETTER
    4 of 5). R_tok counts only those."""
    return max(0, int(model.code_len) - 1)


def reward_terms(config, model, is_pos, cm, codes, pos_codes):
    """GFlowGR's comprehensive reward (``reward.comprehensive_reward``) with the ``gflowgr_reward_*`` and
    ``gflowgr_tok_match`` keys, R_tok over the semantic levels: (reward, log reward, parts), each (B, K)."""
    return comprehensive_reward(
        is_pos, cm.float(), codes, pos_codes, use_aug=config["gflowgr_reward_aug"], use_cm=config["gflowgr_reward_cm"],
        use_tok=config["gflowgr_reward_tok"], eps=config["gflowgr_reward_eps"],
        exponent=config["gflowgr_reward_exponent"], n_semantic=semantic_levels(model),
        tok_match=config["gflowgr_tok_match"])


def item_rewards(model, scorer, interaction, items, config, kind="comprehensive"):
    """Terminal reward (B, G) of items (B, G): ``hit`` = 1 if the item is the observed next item else 0; or GFlowGR's
    comprehensive reward ``R_aug + R_cm + R_tok`` (:func:`reward_terms`)."""
    pos = interaction[model.POS_ITEM_ID]  # (B,)
    is_pos = items == pos.unsqueeze(1)  # (B, G)
    if kind == "hit":
        return is_pos.float()
    if config["gflowgr_reward_cm"]:
        cm = scorer.score(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], candidates=items,
                          pos=pos)  # (B, G)
    else:
        cm = torch.zeros(items.shape, device=items.device)
    reward, _, _ = reward_terms(config, model, is_pos, cm, model.target_tokens(items), model.target_tokens(pos))
    return reward  # (B, G)


# ----- policy gradient ---------------------------------------------------------------------------------------
def clipped_surrogate(logp, old_logp, advantages, clip):
    """PPO's clipped objective per action, ``min(rho A, clip(rho, 1 - eps, 1 + eps) A)``, ``rho = exp(logp - old)``
    (to be maximised; same shape as the inputs)."""
    ratio = torch.exp(logp - old_logp)
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)


def optimisation_steps(trainer, loss_fn, n):
    """Several optimiser updates on one rollout: takes ``n - 1`` steps on ``sum(loss_fn())`` here (zero grad,
    backward, RecBole's gradient clipping, step) and returns a fresh ``loss_fn()`` for RecBole's loop to take the
    last one (in a multi-process run each backward all-reduces the gradients, ``distributed.backward``)."""
    for _ in range(n - 1):
        trainer.optimizer.zero_grad()
        distributed.backward(trainer, sum(loss_fn()))
        if trainer.clip_grad_norm:
            clip_grad_norm_(trainer.model.parameters(), **trainer.clip_grad_norm)
        trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    return loss_fn()


# ----- trainer -----------------------------------------------------------------------------------------------
class BaselineTrainer(GRTrainer):
    """RecBole trainer of a fine-tuning baseline. Subclasses set ``loss_name`` (the method computing a batch's loss
    parts, passed to RecBole's ``_train_epoch`` as ``loss_func``), validate their keys in the static
    ``check_config(config)`` (also called by ``quick_start.run`` before anything trains; it returns the validated
    values, which become attributes), check what depends on the dataset in ``check_model`` and may attach heads in
    ``attach`` (before RecBole builds the optimiser, so they are trained and checkpointed).

    At construction (after the SFT weights are loaded) the T5 is deep-copied into ``self.ref_t5``: frozen, eval
    mode, never updated (IPA and SPRec may swap in a fresh frozen copy per epoch: ``ipa_ref_update``,
    ``sprec_ref_update``). Per-epoch means of the ``stats`` recorded by the loss are logged."""

    loss_name = None

    def __init__(self, config, model):
        self.prepare(config, model)
        super().__init__(config, model)
        self.init_state(config, model, self.device)

    def prepare(self, config, model):
        """Validated hyperparameters as attributes, dataset checks, heads attached to ``model``; the policy's dropout
        set to 0 with ``finetune_disable_dropout`` (TRL's default: the policy equals the reference at step 0, so
        DPO's implicit reward starts at 0 and PPO/GRPO ratios are exact)."""
        self.__dict__.update(self.check_config(config))
        self.check_model(config, model)
        self.attach(config, model)
        if require(config, "finetune_disable_dropout", lambda v: isinstance(v, bool), "must be True or False"):
            disable_dropout(model)

    def init_state(self, config, model, device):
        """Reference copy, random generator, statistics (everything a loss needs beyond RecBole's trainer)."""
        self.ref_t5 = freeze(model.t5)
        self.scorer = None
        self.generator = torch.Generator(device=device).manual_seed(config["seed"])
        self.stats, self.n_recorded = {}, 0

    @staticmethod
    def check_config(config):
        """{attribute: value} of the method's validated keys; ConfigError naming the key otherwise."""
        return {}

    def check_model(self, config, model):
        """Checks that need the model / dataset (e.g. the number of items)."""

    def attach(self, config, model):
        pass

    @property
    def uses_scorer(self):
        """Whether the collaborative model is needed: rollout methods (PPO, GRPO) whose ``reward`` is the
        comprehensive reward with its CM term; IPA overrides this."""
        return getattr(self, "reward", None) == "comprehensive" and bool(self.config["gflowgr_reward_cm"])

    def begin_epoch(self, train_data, epoch_idx):
        """Hook before each epoch (IPA/SPRec refresh their reference or generator snapshot here)."""

    def record(self, stats):
        """Add one batch's statistics (floats) to the epoch's running sums."""
        for key, value in stats.items():
            self.stats[key] = self.stats.get(key, 0.0) + float(value)
        self.n_recorded += 1

    def wrap_data(self, train_data):
        return train_data

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.uses_scorer:
            ensure_scorer(self, train_data)
        self.begin_epoch(train_data, epoch_idx)
        self.stats, self.n_recorded = {}, 0
        losses = super()._train_epoch(self.wrap_data(train_data), epoch_idx, loss_func=getattr(self, self.loss_name),
                                      show_progress=show_progress)
        name = self.config["finetune"]
        for key, total in self.stats.items():
            mean = total / max(1, self.n_recorded)
            self.logger.info(f"epoch {epoch_idx} {name} mean {key}: {mean:.4f}")
            self.tensorboard.add_scalar(f"{name}/{key}", mean, epoch_idx)
        return losses
