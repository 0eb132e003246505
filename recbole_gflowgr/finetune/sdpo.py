"""S-DPO (Chen et al., "On Softmax Direct Preference Optimization for Recommendation", NeurIPS 2024).

Softmax DPO with ``K`` negatives per example (``sdpo_n_neg``, drawn uniformly among the items that are neither the
observed next item ``y+`` nor in the history, distinct within an example), ``r = log pi - log pi_ref``:

    L_S-DPO = -log sigmoid(-log sum_{j=1..K} exp(beta * (r(y_j) - r(y+))))        (sdpo_beta)

With K = 1 this is DPO.
"""
from recbole_gflowgr.finetune.common import BaselineTrainer, pair_loss, require, uniform_negatives


class SDPOTrainer(BaselineTrainer):
    loss_name = "sdpo_loss"

    @staticmethod
    def check_config(config):
        return {"beta": require(config, "sdpo_beta", lambda v: v > 0, "must be > 0 (S-DPO's inverse temperature beta)"),
                "n_neg": int(require(config, "sdpo_n_neg", lambda v: int(v) == v and v >= 1,
                                     "must be an integer >= 1 (negatives per example)"))}

    def check_model(self, config, model):
        require(config, "sdpo_n_neg", lambda v: v <= model.n_items - 2,
                f"must be at most {model.n_items - 2} (the dataset has {model.n_items - 1} items)")

    def sdpo_loss(self, interaction):
        model = self.model
        pos = interaction[model.POS_ITEM_ID]  # (B,)
        neg = uniform_negatives(interaction[model.ITEM_SEQ], pos, model.n_items, self.n_neg, self.generator)  # (B, K)
        loss, stats = pair_loss(model, self.ref_t5, interaction, pos, neg, self.beta)  # (B,)
        self.record(stats)
        return loss.mean()
