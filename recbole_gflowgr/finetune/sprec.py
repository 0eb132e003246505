"""SPRec (Gao et al., "SPRec: Self-Play to Debias LLM-based Recommendation", WWW 2025).

Self-play rounds; here one training epoch = one round ``t``:

1. SFT phase (``sprec_sft_phase``): one pass of the backbone's SFT loss over the training data (positives only);
2. DPO phase: a second pass with ``L_DPO = -log sigmoid(beta * (r(y+) - r(y-)))``, ``r = log pi - log pi_ref``,
   chosen ``y+`` = the observed next item, rejected ``y-`` = the top item of the *previous round's* model (the
   model as it was at the start of this round, a frozen snapshot) by constrained beam search, skipping ``y+``.
   The rejected items are regenerated every round, batch by batch, from that snapshot (not stored per example).
   The DPO reference ``pi_ref`` is the model right after this round's SFT phase (``sprec_ref_update: True``, as in
   SPRec's algorithm) or the initial SFT checkpoint throughout (``False``).

Both phases run inside RecBole's single ``_train_epoch`` call (the loader is iterated once per phase), so the
two loss parts logged per epoch are the SFT pass's and the DPO pass's sums.
"""
from recbole_gflowgr.finetune.common import BaselineTrainer, freeze, pair_loss, require, top_items
from recbole_gflowgr.foundation.errors import ConfigError


class _Phases:
    """The training loader iterated once per phase; ``on_phase(name)`` is called before each pass."""

    def __init__(self, loader, phases, on_phase):
        self.loader, self.phases, self.on_phase = loader, phases, on_phase

    def __len__(self):
        return len(self.loader) * len(self.phases)

    def __iter__(self):
        for phase in self.phases:
            self.on_phase(phase)
            yield from self.loader

    def __getattr__(self, name):
        return getattr(self.loader, name)


class SPRecTrainer(BaselineTrainer):
    loss_name = "sprec_loss"

    phase = "dpo"

    @staticmethod
    def check_config(config):
        return {"beta": require(config, "sprec_beta", lambda v: v > 0, "must be > 0 (DPO's inverse temperature beta)"),
                "sft_phase": require(config, "sprec_sft_phase", lambda v: isinstance(v, bool), "must be True or False"),
                "ref_update": require(config, "sprec_ref_update", lambda v: isinstance(v, bool), "must be True or False")}

    def check_model(self, config, model):
        if model.n_items < 3:
            raise ConfigError(f"finetune=sprec needs at least 2 items (the dataset has {model.n_items - 1})")

    def begin_epoch(self, train_data, epoch_idx):
        self.snapshot_t5 = freeze(self.model.t5)  # previous round's model: generates this round's rejected items

    def wrap_data(self, train_data):
        return _Phases(train_data, ("sft", "dpo") if self.sft_phase else ("dpo",), self.enter_phase)

    def enter_phase(self, phase):
        self.phase = phase
        if phase == "dpo" and self.ref_update:
            self.ref_t5 = freeze(self.model.t5)  # after this round's SFT phase

    def self_play_negatives(self, interaction):
        """(B, 1) the snapshot's top beam-search item other than the observed next item."""
        model = self.model
        ids, mask = model.encoder_inputs(interaction)
        return top_items(self.snapshot_t5, ids, mask, model.trie, 1, exclude=interaction[model.POS_ITEM_ID],
                         length_groups=model.length_buckets, temperature=model.temperature)

    def sprec_loss(self, interaction):
        """(SFT part, DPO part) of a batch; the inactive phase's part is 0."""
        model = self.model
        if self.phase == "sft":
            sft = model.calculate_loss(interaction)
            return sft, sft.new_zeros(())
        neg = self.self_play_negatives(interaction)  # (B, 1)
        loss, stats = pair_loss(model, self.ref_t5, interaction, interaction[model.POS_ITEM_ID], neg, self.beta)
        self.record(stats)
        return loss.new_zeros(()), loss.mean()
