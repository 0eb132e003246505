"""PPO (Schulman et al., "Proximal Policy Optimization Algorithms", 2017) over generated items.

Episode: generating one item's semantic ID, L steps; state s_t = (history x, code prefix o_<t), action = token
o_t drawn from the constrained next-token distribution pi(. | s_t) (``ppo_samples`` episodes per example,
ancestral sampling at ``ppo_temperature``). A value head ``V(s_t)`` (MLP on the decoder state that predicts token
t, attached to the model as ``ppo_value_head``, sharing the decoder) is the critic. Rewards (InstructGPT-style KL
penalty to the frozen SFT reference, ``ppo_kl_coef`` = c):

    r_t = -c * (log pi_old(o_t | s_t) - log pi_ref(o_t | s_t)) + [t = L-1] * R(o)

with ``R`` the terminal reward (``ppo_reward``: GFlowGR's comprehensive reward, or hit = [o == y+]). GAE:
``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` (``V(s_L) = 0``), ``A_t = sum_k (gamma lambda)^k delta_{t+k}``,
returns ``A_t + V_old(s_t)``; advantages whitened over the batch (``ppo_whiten``). Loss

    L = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) + c_v * 0.5 * mean_t max((V - Ret)^2, (V_clip - Ret)^2)

with ``V_clip = V_old + clip(V - V_old, -eps_v, eps_v)`` (``ppo_value_clip``; 0 = unclipped). ``ppo_epochs``
updates per rollout (``pi_old``, ``V_old`` = the first one's, so its ratio is 1); the first ``ppo_epochs - 1``
are taken inside the loss function, the last by RecBole's loop.
"""
import torch
from torch import nn

from recbole_gflowgr.finetune.common import (
    REWARDS, BaselineTrainer, clipped_surrogate, disable_dropout, item_rewards, optimisation_steps,
    policy_and_reference, policy_samples, require, require_choice,
)


class ValueHead(nn.Module):
    """V(s_t): (..., d) decoder states -> (...) values."""

    def __init__(self, d_model):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, 1))

    def forward(self, hidden):
        return self.mlp(hidden).squeeze(-1)


def gae(rewards, values, gamma, lamda):
    """Generalised advantage estimation along the last dim (L steps, terminal after the last):
    (advantages, returns), both shaped like ``rewards`` / ``values`` (..., L)."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    next_value = torch.zeros_like(values[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        running = delta + gamma * lamda * running
        adv[..., t] = running
        next_value = values[..., t]
    return adv, adv + values


class PPOTrainer(BaselineTrainer):
    loss_name = "ppo_loss"

    @staticmethod
    def check_config(config):
        def integer(key, must):
            return int(require(config, key, lambda v: int(v) == v and v >= 1, must))

        def flag(key):
            return require(config, key, lambda v: isinstance(v, bool), "must be True or False")

        return {
            "n": integer("ppo_samples", "must be an integer >= 1 (episodes per example)"),
            "clip": require(config, "ppo_clip", lambda v: v > 0, "must be > 0 (clip range of the ratio)"),
            "kl_coef": require(config, "ppo_kl_coef", lambda v: v >= 0, "must be >= 0 (KL penalty to the reference)"),
            "gamma": require(config, "ppo_gamma", lambda v: 0 <= v <= 1, "must be in [0, 1] (discount)"),
            "lamda": require(config, "ppo_lambda", lambda v: 0 <= v <= 1, "must be in [0, 1] (GAE lambda)"),
            "updates": integer("ppo_epochs", "must be an integer >= 1 (updates per rollout)"),
            "vf_coef": require(config, "ppo_vf_coef", lambda v: v >= 0, "must be >= 0 (weight of the value loss)"),
            "value_clip": require(config, "ppo_value_clip", lambda v: v >= 0, "must be >= 0 (0 = unclipped value loss)"),
            "temperature": require(config, "ppo_temperature", lambda v: v > 0, "must be > 0 (sampling temperature)"),
            "reward": require_choice(config, "ppo_reward", REWARDS),
            "whiten": flag("ppo_whiten"),
            "no_dropout": flag("ppo_disable_dropout"),
        }

    def attach(self, config, model):
        if not hasattr(model, "ppo_value_head"):
            device = next(model.t5.parameters()).device
            model.ppo_value_head = ValueHead(model.t5.config.d_model).to(device)
        if self.no_dropout:
            disable_dropout(model)

    def rollout(self, interaction):
        """{"items" (B, n), "reward" (B, n)}: episodes sampled from the current policy."""
        model = self.model
        items, _ = policy_samples(model, interaction, self.n, self.temperature, self.generator)  # (B, n)
        return {"items": items, "reward": item_rewards(model, self.scorer, interaction, items, self.config, self.reward)}

    def objective(self, interaction, rollout):
        """(clipped policy loss, c_v * value loss) on a rollout; the first call fixes pi_old, V_old and the GAE."""
        model = self.model
        first = "old_logp" not in rollout  # the reference is only needed for the first call's KL rewards
        logp, ref, hidden = policy_and_reference(model, self.ref_t5 if first else None, interaction, rollout["items"],
                                                 steps=True, hidden=True)  # (B, n, L), (B, n, L), (B, n, L, d)
        values = model.ppo_value_head(hidden)  # (B, n, L)
        if first:
            old_logp, old_v = logp.detach(), values.detach()
            step_reward = -self.kl_coef * (old_logp - ref)  # (B, n, L)
            step_reward[..., -1] += rollout["reward"]
            adv, ret = gae(step_reward, old_v, self.gamma, self.lamda)  # (B, n, L) each
            if self.whiten and adv.numel() > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            rollout.update(old_logp=old_logp, old_v=old_v, adv=adv, ret=ret, kl=float((old_logp - ref).sum(-1).mean()))
        pg = -clipped_surrogate(logp, rollout["old_logp"], rollout["adv"], self.clip).mean()
        err = (values - rollout["ret"]) ** 2  # (B, n, L)
        if self.value_clip > 0:
            clipped = rollout["old_v"] + (values - rollout["old_v"]).clamp(-self.value_clip, self.value_clip)
            err = torch.maximum(err, (clipped - rollout["ret"]) ** 2)
        return pg, self.vf_coef * 0.5 * err.mean()

    def ppo_loss(self, interaction):
        rollout = self.rollout(interaction)
        parts = optimisation_steps(self, lambda: self.objective(interaction, rollout), self.updates)
        pos = interaction[self.model.POS_ITEM_ID].unsqueeze(1)
        self.record({"reward": rollout["reward"].mean(), "hit": (rollout["items"] == pos).float().mean(),
                     "kl": rollout["kl"]})
        return parts
