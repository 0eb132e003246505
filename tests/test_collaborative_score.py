"""R_cm normalisations of the collaborative scorer (gflowgr_cm_score: percentile | minmax), on a stub SASRec."""
import pytest
import torch
from torch import nn

from recbole_gflowgr.model.collaborative import CollaborativeScorer, rank_percentile


class StubSASRec(nn.Module):
    """SASRec's interface: forward(seq, len) -> (B, d) and item_embedding (n_items, d); logits = given table."""

    def __init__(self, logits):
        super().__init__()
        self.n_items = logits.shape[1]
        self.item_embedding = nn.Embedding(self.n_items, self.n_items)
        self.item_embedding.weight.data = torch.eye(self.n_items)
        self.table = logits

    def forward(self, item_seq, item_seq_len):
        return self.table[: item_seq.shape[0]]


LOGITS = torch.tensor([[0.0, 100.0, 3.0, 2.0, 1.0, 0.5, 2.0]])  # (1, 7): item 1 an outlier, items 3 and 6 tied


def test_rank_percentile_among_the_allowed_items():
    assert CollaborativeScorer(StubSASRec(LOGITS)).mode == "minmax"  # the default (chosen on the valid split)
    scorer = CollaborativeScorer(StubSASRec(LOGITS), mode="percentile")
    seq, pos = torch.tensor([[2, 0]]), torch.tensor([4])  # history: item 2; positive: item 4
    s = scorer.score(seq, torch.tensor([1]), pos=pos)[0]  # (7,)
    # allowed: items 1, 3, 5, 6 (logits 100, 2, 0.5, 2): 5 is the lowest (0), 1 the highest (1), 3 and 6 tied:
    # each beats item 5 and ties the other -> (1 + 0.5) / 3 = 0.5
    assert s[[1, 3, 5, 6]].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.5])
    assert s[4].item() == pytest.approx(1 / 4)  # the positive (logit 1): beats one of the 4 allowed items
    assert s[0].item() == 0.0  # padding
    # the minmax form: the outlier squeezes every other item near 0
    scorer.mode = "minmax"
    m = scorer.score(seq, torch.tensor([1]), candidates=torch.tensor([[1, 3, 4]]))[0]
    assert m.tolist() == pytest.approx([1.0, 1.5 / 99.5, 0.5 / 99.5])
    with pytest.raises(ValueError, match="gflowgr_cm_score"):
        CollaborativeScorer(StubSASRec(LOGITS), mode="rank")


def test_rank_percentile_matches_a_loop_and_ranks_like_the_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 6, (4, 15), generator=g).float()  # many ties
    allowed = torch.rand(4, 15, generator=g) > 0.3
    got = rank_percentile(logits, allowed)
    for b in range(4):
        for i in range(15):
            others = [j for j in range(15) if allowed[b, j] and j != i]
            want = sum((logits[b, j] < logits[b, i]).item() + 0.5 * (logits[b, j] == logits[b, i]).item()
                       for j in others) / max(1, len(others))
            assert got[b, i].item() == pytest.approx(want)


def test_scores_are_float32_under_autocast():
    scorer = CollaborativeScorer(StubSASRec(torch.randn(2, 9)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scorer.logits(torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 3])).dtype == torch.float32
        assert scorer.score(torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 3])).dtype == torch.float32
