"""DPO (Rafailov et al., "Direct Preference Optimization", NeurIPS 2023) from the SFT checkpoint.

Per training example: chosen = the observed next item ``y+``, rejected = one item ``y-`` drawn uniformly among the
items that are neither ``y+`` nor in the history; with ``r(y) = log pi(y|x) - log pi_ref(y|x)`` (constrained item
log-probs of the policy and of the frozen SFT copy),

    L_DPO = -log sigmoid(beta * (r(y+) - r(y-)))        (dpo_beta)

``dpo_fixed_negatives: True`` (default): vanilla DPO's fixed preference data set, each example's rejected item
drawn once (before the first epoch, from a generator seeded with ``seed`` alone, so a resumed run draws the same)
and kept for every epoch; ``False``: a new negative every time an example is seen. The example of a batch row is
found through a column ``dpo_example_index`` (its row in the training split) added to the training data.
"""
import torch

from recbole_gflowgr.finetune.common import BaselineTrainer, pair_loss, require, uniform_negatives

EXAMPLE = "dpo_example_index"


def draw_fixed_negatives(item_seq, pos, n_items, k, seed, chunk=1024):
    """(N, k) rejected items for the N examples (histories (N, S), positives (N,)), drawn once with a generator
    seeded by ``seed``, in chunks of ``chunk`` rows (the draw is (chunk, n_items) at a time)."""
    generator = torch.Generator(device=item_seq.device).manual_seed(int(seed))
    return torch.cat([uniform_negatives(item_seq[s:s + chunk], pos[s:s + chunk], n_items, k, generator)
                      for s in range(0, pos.shape[0], chunk)])


class DPOTrainer(BaselineTrainer):
    loss_name = "dpo_loss"

    @staticmethod
    def check_config(config):
        return {"beta": require(config, "dpo_beta", lambda v: v > 0, "must be > 0 (DPO's inverse temperature beta)"),
                "fixed": require(config, "dpo_fixed_negatives", lambda v: isinstance(v, bool), "must be True or False")}

    def begin_epoch(self, train_data, epoch_idx):
        if not self.fixed or getattr(self, "negatives", None) is not None:
            return
        model, feat = self.model, train_data._dataset.inter_feat
        feat[EXAMPLE] = torch.arange(len(feat))  # (N,) each batch row's example, carried by RecBole's collate
        self.negatives = draw_fixed_negatives(feat[model.ITEM_SEQ], feat[model.POS_ITEM_ID], model.n_items, 1,
                                              self.config["seed"]).to(model.item_tokens.device)  # (N, 1)

    def dpo_loss(self, interaction):
        model = self.model
        pos = interaction[model.POS_ITEM_ID]  # (B,)
        if self.fixed:
            neg = self.negatives[interaction[EXAMPLE].to(self.negatives.device)]  # (B, 1)
        else:
            neg = uniform_negatives(interaction[model.ITEM_SEQ], pos, model.n_items, 1, self.generator)  # (B, 1)
        loss, stats = pair_loss(model, self.ref_t5, interaction, pos, neg, self.beta)  # (B,)
        self.record(stats)
        return loss.mean()
