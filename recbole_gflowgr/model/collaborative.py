"""The collaborative model (CM) of GFlowGR §3 as a scorer: RecBole's own SASRec, frozen.

:class:`CollaborativeScorer` gives, without gradient and on the training device, scores in [0, 1] of a batch of
histories against candidate items or the whole catalog (R_cm of GFlowGR's reward, ``gflowgr_cm_score``): per user,
the logits over all items min-max normalised (``minmax``, the default: best item of the catalog 1, worst 0), or the
rank percentile of an item's SASRec logit among the allowed items (``percentile``: not in the history, not the
positive, not padding; what the adaptive sampler's quantiles rank). Padding item 0 is never scored above 0. The
default was chosen on the valid split of industrial-scientific (TIGER, seed 42, converged SFT, 6 GFlowGR-TB epochs:
best valid NDCG@10 .0471 min-max vs .0467 percentile; results/industrial-scientific.jsonl, grid tb-control-cpu).

The CM is trained once per dataset and cached by the runtime (``quick_start.cm_checkpoint``), which also hands its
item embeddings to LETTER's tokenizer (``quick_start.sasrec_item_embeddings``).
"""
import torch

from recbole_gflowgr.foundation.compat import trusted_torch_load

MODES = ("percentile", "minmax")


def rank_percentile(logits, allowed):
    """(B, n) per-row percentile in [0, 1] of every entry of ``logits`` (B, n) among the ``allowed`` (B, n) entries
    of its row, itself left out: the share of the other allowed entries below it, ties counted half (the lowest
    allowed entry 0, the highest 1; an entry that is not allowed, e.g. the positive, gets the share of allowed
    entries it beats). Rows with no other allowed entry give 0."""
    s = logits.float()
    ordered = s.masked_fill(~allowed, torch.inf).sort(dim=1).values  # (B, n): the allowed logits first, ascending
    below = torch.searchsorted(ordered, s.contiguous(), side="left")  # (B, n) allowed entries strictly below
    upto = torch.searchsorted(ordered, s.contiguous(), side="right")  # (B, n) ... below or tied
    n_allowed = allowed.sum(1, keepdim=True)  # (B, 1)
    upto = torch.minimum(upto, n_allowed)  # a +inf logit must not count the excluded +inf padding of `ordered`
    below = torch.minimum(below, n_allowed)
    self_ = allowed.to(torch.long)  # an allowed entry ties with itself: not counted
    others = (n_allowed - self_).clamp_min(1)  # (B, n)
    return ((below + 0.5 * (upto - below - self_)) / others).clamp_(0.0, 1.0)


class CollaborativeScorer:
    """Frozen SASRec: ``score(item_seq, item_seq_len, candidates=None, pos=None)`` → (B, n_items) or (B, C) in
    [0, 1], normalised per user as ``mode`` says (``percentile`` or ``minmax``, see the module docstring; ``pos``
    (B,), the observed next items, is left out of the percentile's reference set). Computed in float32, also in an
    ``enable_amp`` run (autocast off).

    ``item_seq`` uses RecBole's internal item ids of the dataset the CM was trained on; the GR models are trained
    on the same RecBole dataset, so their ids agree (checked by the item count at construction).
    """

    def __init__(self, model, mode="minmax"):
        if mode not in MODES:
            raise ValueError(f"gflowgr_cm_score='{mode}': use percentile or minmax")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.n_items = model.n_items
        self.mode = mode

    @classmethod
    def from_checkpoint(cls, path, dataset, device="cpu"):
        from recbole.model.sequential_recommender import SASRec

        checkpoint = trusted_torch_load(path, map_location=device)
        model = SASRec(checkpoint["config"], dataset).to(device)
        model.load_state_dict(checkpoint["state_dict"])
        return cls(model)

    @torch.no_grad()
    def logits(self, item_seq, item_seq_len):
        with torch.autocast(device_type=item_seq.device.type, enabled=False):  # float32 even under enable_amp
            seq_output = self.model.forward(item_seq, item_seq_len).float()  # (B, d)
            return seq_output @ self.model.item_embedding.weight.float().T  # (B, n_items)

    @torch.no_grad()
    def score(self, item_seq, item_seq_len, candidates=None, pos=None):
        logits = self.logits(item_seq, item_seq_len)  # (B, n_items) float32
        if self.mode == "percentile":
            allowed = torch.ones_like(logits, dtype=torch.bool)  # (B, n_items)
            allowed[:, 0] = False
            allowed.scatter_(1, item_seq, False)
            if pos is not None:
                allowed.scatter_(1, pos.view(-1, 1), False)
            scores = rank_percentile(logits, allowed)  # (B, n_items)
            scores[:, 0] = 0.0  # padding item
        else:
            logits[:, 0] = -torch.inf  # padding item
            real = logits[:, 1:]
            low = real.min(dim=1, keepdim=True).values
            high = real.max(dim=1, keepdim=True).values
            scores = ((logits - low) / (high - low).clamp_min(1e-12)).clamp_(0.0, 1.0)  # (B, n_items), pad -> 0
        if candidates is not None:
            scores = scores.gather(1, candidates)  # (B, C)
        return scores
