"""GRPO (Shao et al., "DeepSeekMath", 2024): group relative policy optimisation over generated items.

Per example (history ``x``, observed next item ``y+``): ``G`` items ``o_1..o_G`` (``grpo_group_size``) are sampled
from the current constrained policy (ancestral sampling over the L code tokens, ``grpo_temperature``), each gets
a terminal reward ``R_i`` (``grpo_reward``: GFlowGR's comprehensive reward, or hit = [o_i == y+]) and the
group-normalised advantage ``A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-4)`` (population std), shared by the L
tokens of ``o_i``. With ``rho_{i,t} = pi(o_{i,t} | x, o_{i,<t}) / pi_old(...)`` (per-token constrained probs)

    L = -1/G sum_i 1/L sum_t [ min(rho A_i, clip(rho, 1 - eps, 1 + eps) A_i) - beta * KL_t ]
    KL_t = pi_ref / pi - log(pi_ref / pi) - 1          (k3 estimator, unbiased, >= 0)

(``grpo_clip`` = eps, ``grpo_beta`` = beta). ``pi_old`` is the policy at the first of ``grpo_iterations``
updates on the same samples (ratio 1 there); the first ``grpo_iterations - 1`` updates are taken inside the loss
function, the last by RecBole's loop. ``grpo_disable_dropout`` removes dropout so that ratios are exact.
"""
from recbole_gflowgr.finetune.common import (
    REWARDS, BaselineTrainer, clipped_surrogate, disable_dropout, item_rewards, optimisation_steps,
    policy_and_reference, policy_samples, require, require_choice,
)

ADV_EPS = 1e-4


def group_advantages(rewards, eps=ADV_EPS):
    """(B, G) ``(R - mean) / (std + eps)`` within each group (row) of rewards (B, G); zero mean per group.
    Computed in float64: with near-tied rewards the std is tiny and float32 rounding of the mean, divided by it,
    left groups visibly off zero mean (e.g. 1e-5 for rewards .98 apart by 1e-3)."""
    r = rewards.double()
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, unbiased=False, keepdim=True)
    return ((r - mean) / (std + eps)).to(rewards.dtype)


def k3_kl(logp, ref_logp):
    """Per-token k3 estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi: ``e^d - d - 1``,
    ``d = log pi_ref - log pi`` (>= 0, 0 iff equal)."""
    d = ref_logp - logp
    return d.exp() - d - 1


class GRPOTrainer(BaselineTrainer):
    loss_name = "grpo_loss"

    @staticmethod
    def check_config(config):
        return {
            "G": int(require(config, "grpo_group_size", lambda v: int(v) == v and v >= 2,
                             "must be an integer >= 2 (samples per example; advantages are normalised per group)")),
            "beta": require(config, "grpo_beta", lambda v: v >= 0, "must be >= 0 (weight of the KL to the reference)"),
            "clip": require(config, "grpo_clip", lambda v: v > 0, "must be > 0 (clip range of the ratio)"),
            "iterations": int(require(config, "grpo_iterations", lambda v: int(v) == v and v >= 1,
                                      "must be an integer >= 1 (updates per batch of samples)")),
            "temperature": require(config, "grpo_temperature", lambda v: v > 0, "must be > 0 (sampling temperature)"),
            "reward": require_choice(config, "grpo_reward", REWARDS),
            "no_dropout": require(config, "grpo_disable_dropout", lambda v: isinstance(v, bool), "must be True or False"),
        }

    def attach(self, config, model):
        if self.no_dropout:
            disable_dropout(model)

    def rollout(self, interaction):
        """{"items" (B, G), "reward" (B, G), "adv" (B, G)} sampled from the current policy."""
        model = self.model
        items, _ = policy_samples(model, interaction, self.G, self.temperature, self.generator)  # (B, G)
        reward = item_rewards(model, self.scorer, interaction, items, self.config, self.reward)  # (B, G)
        return {"items": items, "reward": reward, "adv": group_advantages(reward)}

    def objective(self, interaction, rollout):
        """(clipped policy loss, beta * KL) on a rollout; the first call fixes pi_old."""
        ref_t5 = None if "ref" in rollout else self.ref_t5  # the reference's log-probs are computed once per rollout
        logp, ref = policy_and_reference(self.model, ref_t5, interaction, rollout["items"], steps=True)  # (B, G, L)
        old = rollout.setdefault("old", logp.detach())
        ref = rollout.setdefault("ref", ref)
        adv = rollout["adv"].unsqueeze(-1)  # (B, G, 1)
        surrogate = clipped_surrogate(logp, old, adv, self.clip)  # (B, G, L)
        kl = k3_kl(logp, ref)  # (B, G, L)
        rollout["kl"] = float(kl.detach().mean())
        return -surrogate.mean(), self.beta * kl.mean()

    def grpo_loss(self, interaction):
        rollout = self.rollout(interaction)
        parts = optimisation_steps(self, lambda: self.objective(interaction, rollout), self.iterations)
        pos = interaction[self.model.POS_ITEM_ID].unsqueeze(1)
        self.record({"reward": rollout["reward"].mean(), "hit": (rollout["items"] == pos).float().mean(),
                     "kl": rollout["kl"]})
        return parts
