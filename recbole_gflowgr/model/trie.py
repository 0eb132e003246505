"""The tensorised prefix trie of the items' semantic IDs and the constrained next-token distribution over it.

Every item has a semantic ID of ``L`` code tokens, given as vocabulary token ids in ``codes`` (n_items, L). At every
step the logits of tokens that do not extend the current prefix to a real item are set to ``-inf`` before the
log-softmax (:func:`constrained_log_softmax`): the next-token distribution is renormalised over the allowed
children of the prefix node. Beam search, teacher forcing and sampling (``beam_search.py``, ``finetune/``) all use
this one policy.
"""
import torch

__all__ = ["SemanticIDTrie", "constrained_log_softmax"]


class SemanticIDTrie:
    """Tensorised prefix trie over the items' semantic IDs.

    For each level ``t`` (0..L-1) the nodes are the distinct ID prefixes of length ``t`` (level 0: the root only)
    and ``child[t]`` is an int32 table of shape (n_nodes_t + 1, width_t): entry ``[node, tok - lo[t]]`` is the id of
    the level-(t+1) node reached by appending token ``tok``, or -1 when that token is not allowed.  At the last level
    the child id *is* the item index (leaf -> item map).  The extra last row of each table is a "dead" node with no
    children, used for padded beams (node id -1).  Tables only span the level's token range ``[lo[t], lo[t] +
    width[t])``, so for 4 x 256 codes and 30k items the largest one is about 30k x 256 int32 = 30 MB.

    Attributes: ``codes`` (n_items, L) token ids, ``item_nodes`` (n_items, L) the node id of each item's prefix
    at every level, ``child`` list of L tables, ``lo``/``width`` lists of L ints, ``n_items``, ``L``.
    """

    def __init__(self, codes: torch.Tensor):
        codes = torch.as_tensor(codes).long().cpu()
        if codes.dim() != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"codes must be a non-empty (n_items, L) tensor, got shape {tuple(codes.shape)}")
        if (codes < 0).any():
            raise ValueError("codes must be non-negative vocabulary token ids")
        n_items, L = codes.shape
        if torch.unique(codes, dim=0).shape[0] != n_items:
            raise ValueError("semantic IDs must be distinct: two items share the same code sequence")
        self.n_items, self.L = int(n_items), int(L)
        self.codes = codes  # (n_items, L)

        # node id of every item's prefix of length t, for t = 0..L-1
        item_nodes = torch.zeros(n_items, L, dtype=torch.long)  # (n_items, L)
        n_nodes = [1]
        for t in range(1, L):
            _, inverse = torch.unique(codes[:, :t], dim=0, return_inverse=True)
            item_nodes[:, t] = inverse
            n_nodes.append(int(inverse.max()) + 1)
        self.item_nodes = item_nodes
        self.n_nodes = n_nodes

        self.lo, self.width, self.child = [], [], []
        for t in range(L):
            lo, hi = int(codes[:, t].min()), int(codes[:, t].max()) + 1
            table = torch.full((n_nodes[t] + 1, hi - lo), -1, dtype=torch.int32)  # (n_nodes_t + 1, width_t)
            nxt = item_nodes[:, t + 1] if t + 1 < L else torch.arange(n_items)
            table[item_nodes[:, t], codes[:, t] - lo] = nxt.to(torch.int32)
            self.lo.append(lo)
            self.width.append(hi - lo)
            self.child.append(table)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device) -> "SemanticIDTrie":
        """Move all tables to ``device`` (in place) and return self."""
        self.codes = self.codes.to(device)
        self.item_nodes = self.item_nodes.to(device)
        self.child = [c.to(device) for c in self.child]
        return self

    def children(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """Child ids (..., width_level) of level-``level`` nodes (...); node -1 (dead) has no children."""
        dead = self.child[level].shape[0] - 1
        rows = torch.where(nodes < 0, torch.full_like(nodes, dead), nodes)
        return self.child[level][rows].long()

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return f"SemanticIDTrie(n_items={self.n_items}, L={self.L}, n_nodes={self.n_nodes}, width={self.width})"


def constrained_log_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Log-softmax of ``logits`` renormalised over ``allowed`` tokens; disallowed entries are -inf.

    Rows with no allowed token come out all -inf without producing NaN values or NaN gradients.
    """
    row_ok = allowed.any(dim=-1, keepdim=True)
    keep = allowed | ~row_ok  # a fully masked row is computed unmasked, then masked out below
    logp = torch.log_softmax(logits.float().masked_fill(~keep, float("-inf")), dim=-1)
    return logp.masked_fill(~allowed, float("-inf"))
