"""DPO (Rafailov et al., "Direct Preference Optimization", NeurIPS 2023) from the SFT checkpoint.

Per training example: chosen = the observed next item ``y+``, rejected = one item ``y-`` drawn uniformly among the
items that are neither ``y+`` nor in the history; with ``r(y) = log pi(y|x) - log pi_ref(y|x)`` (constrained item
log-probs of the policy and of the frozen SFT copy),

    L_DPO = -log sigmoid(beta * (r(y+) - r(y-)))        (dpo_beta)

A new negative is drawn every time an example is seen.
"""
from recbole_gflowgr.finetune.common import BaselineTrainer, pair_loss, require, uniform_negatives


class DPOTrainer(BaselineTrainer):
    loss_name = "dpo_loss"

    @staticmethod
    def check_config(config):
        return {"beta": require(config, "dpo_beta", lambda v: v > 0, "must be > 0 (DPO's inverse temperature beta)")}

    def dpo_loss(self, interaction):
        model = self.model
        pos = interaction[model.POS_ITEM_ID]  # (B,)
        neg = uniform_negatives(interaction[model.ITEM_SEQ], pos, model.n_items, 1, self.generator)  # (B, 1)
        loss, stats = pair_loss(model, self.ref_t5, interaction, pos, neg, self.beta)  # (B,)
        self.record(stats)
        return loss.mean()
