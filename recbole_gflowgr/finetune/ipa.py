"""IPA, the Iterative Preference Alignment of OneRec (Deng et al., "OneRec: Unifying Retrieve and Rank with
Generative Recommender and Iterative Preference Alignment", 2025), with GFlowGR's collaborative SASRec as the
reward model.

Per batch (on a random share ``ipa_dpo_ratio`` of its examples): the current model generates ``N`` items by
constrained beam search (``ipa_beams``); the reward model scores them (the CM's per-user normalised score,
``model.collaborative.CollaborativeScorer``, ``gflowgr_cm_score``: both forms rank the beams alike); chosen ``y_w`` = the best-scored beam, rejected ``y_l`` = the worst. The
loss is OneRec's

    L = w_ntp * L_NTP(y+) + lambda * L_DPO(y_w, y_l),   L_DPO = -log sigmoid(beta * (r(y_w) - r(y_l)))

with ``L_NTP`` the backbone's SFT loss on the observed item (all examples), ``r = log pi - log pi_ref`` and
examples whose beams all score the same left out of ``L_DPO``. One iteration = one epoch: with ``ipa_ref_update``
the reference ``pi_ref`` is refreshed to the current model (OneRec's ``M_t``) at the start of every epoch;
otherwise it stays the SFT checkpoint.
"""
import torch

from recbole_gflowgr.finetune.common import BaselineTrainer, freeze, pair_loss, require, top_items


def _take(x, rows):
    return x if rows is None else x[rows]


class IPATrainer(BaselineTrainer):
    loss_name = "ipa_loss"

    @staticmethod
    def check_config(config):
        return {
            "beta": require(config, "ipa_beta", lambda v: v > 0, "must be > 0 (DPO's inverse temperature beta)"),
            "beams": int(require(config, "ipa_beams", lambda v: int(v) == v and v >= 2,
                                 "must be an integer >= 2 (beams generated per example)")),
            "lamda": require(config, "ipa_lambda", lambda v: v >= 0, "must be >= 0 (weight of the DPO loss)"),
            "ntp_weight": require(config, "ipa_ntp_weight", lambda v: v >= 0, "must be >= 0 (weight of the NTP loss)"),
            "ratio": require(config, "ipa_dpo_ratio", lambda v: 0 < v <= 1,
                             "must be in (0, 1] (share of each batch given preference pairs)"),
            "ref_update": require(config, "ipa_ref_update", lambda v: isinstance(v, bool), "must be True or False"),
        }

    def check_model(self, config, model):
        require(config, "ipa_beams", lambda v: v <= model.n_items - 1,
                f"must be at most {model.n_items - 1} (the dataset has {model.n_items - 1} items)")

    @property
    def uses_scorer(self):
        return True

    def begin_epoch(self, train_data, epoch_idx):
        if self.ref_update:
            self.ref_t5 = freeze(self.model.t5)  # M_t: the reference of this iteration

    def preference_pairs(self, interaction, rows=None):
        """(chosen (B',), rejected (B',), valid (B',) bool, beam rewards (B', N)) for the batch rows ``rows``."""
        model = self.model
        ids, mask = model.encoder_inputs(interaction, rows)
        beams = top_items(model.t5, ids, mask, model.trie, self.beams, length_groups=model.length_buckets,
                          temperature=model.temperature)  # (B', N)
        reward = self.scorer.score(_take(interaction[model.ITEM_SEQ], rows), _take(interaction[model.ITEM_SEQ_LEN], rows),
                                   candidates=beams, pos=_take(interaction[model.POS_ITEM_ID], rows))  # (B', N) in [0, 1]
        best, worst = reward.argmax(dim=1, keepdim=True), reward.argmin(dim=1, keepdim=True)  # (B', 1)
        valid = reward.gather(1, best) > reward.gather(1, worst)  # (B', 1)
        return beams.gather(1, best).squeeze(1), beams.gather(1, worst).squeeze(1), valid.squeeze(1), reward

    def ipa_loss(self, interaction):
        """(w_ntp * L_NTP, lambda * L_DPO) of a batch."""
        model = self.model
        B = interaction[model.POS_ITEM_ID].shape[0]
        rows = None
        if self.ratio < 1:
            n = max(1, int(round(self.ratio * B)))
            rows = torch.randperm(B, generator=self.generator, device=self.generator.device)[:n].to(
                interaction[model.POS_ITEM_ID].device)
        chosen, rejected, valid, reward = self.preference_pairs(interaction, rows)
        loss, stats = pair_loss(model, self.ref_t5, interaction, chosen, rejected, self.beta, rows)  # (B',)
        dpo = (loss * valid).sum() / valid.sum().clamp_min(1)
        ntp = model.calculate_loss(interaction) if self.ntp_weight > 0 else dpo.new_zeros(())
        stats.update(beam_reward=float(reward.mean()), reward_gap=float((reward.max(1).values - reward.min(1).values).mean()),
                     valid_pairs=float(valid.float().mean()))
        self.record(stats)
        return self.ntp_weight * ntp, self.lamda * dpo
