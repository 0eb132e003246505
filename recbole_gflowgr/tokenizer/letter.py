"""LETTER item tokenizer (Wang et al., 2024): RQ-VAE + collaborative and diversity regularisation.

* collaborative: InfoNCE between the quantised item latent z_q (B, e_dim) and the item's collaborative embedding
  (SASRec's, given as an array aligned with the items), in-batch negatives, raw dot product as in the LETTER code;
  weight ``alpha``. Collaborative embeddings wider than ``e_dim`` are projected onto their top ``e_dim`` principal
  components (fixed, no parameters; narrower ones are zero-padded), LETTER itself trains a 32-d SASRec instead.
* diversity: at every epoch start the code vectors of each level are clustered by k-means into ``n_clusters``; for
  an item assigned code i, a random other code of i's cluster is the positive of a softmax over the codebook
  (i itself masked), pulling codes towards their cluster and apart from the others; weight ``beta``.
* Sinkhorn-Knopp balanced assignment on levels with ``sk_epsilons[l] > 0`` (the last level, 0.003) while training;
  after training, items still sharing a full code are re-assigned from a Sinkhorn plan within their group (up to
  ``collision_sk_rounds`` rounds, as LETTER's generate_indices.py; see ``RQVAETrainer.resolve_collisions``).
"""
import numpy as np
import torch
import torch.nn.functional as F

from recbole_gflowgr.tokenizer.rqvae import RQVAETrainer, collision_groups, distinct_assignment, kmeans  # noqa: F401


def project_cf(cf, e_dim):
    """(n, e_dim) float32: ``cf`` (n, d) as is if d == e_dim, its top principal components if d > e_dim, else
    zero-padded."""
    cf = torch.as_tensor(np.asarray(cf, dtype=np.float32))
    n, d = cf.shape
    if d == e_dim:
        return cf
    if d < e_dim:
        return F.pad(cf, (0, e_dim - d))
    centred = cf - cf.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)  # vh (d, d)
    vh = vh[:e_dim]
    vh = vh * torch.sign(vh[:, vh.abs().argmax(1)].diagonal())[:, None]  # fixed sign: deterministic output
    return (centred.double() @ vh.t()).float()  # (n, e_dim)


class LetterTrainer(RQVAETrainer):
    def __init__(self, emb, cf_emb, cfg, seed=42, device="cpu", logger=None, item_keys=None):
        super().__init__(emb, cfg, seed, device, logger, item_keys)
        if len(cf_emb) != self.x.shape[0]:
            raise ValueError(f"LETTER: {len(cf_emb)} collaborative embeddings for {self.x.shape[0]} items")
        self.cf = project_cf(cf_emb, cfg["e_dim"]).to(self.device)  # (n, e_dim)
        self.same_cluster = [None] * len(cfg["num_emb_list"])  # per level (K, K) bool, self excluded

    @torch.no_grad()
    def on_epoch_start(self, epoch):
        if self.cfg["beta"] <= 0:
            return
        for level, book in enumerate(self.model.rq.codebooks):
            k = min(self.cfg["n_clusters"], book.shape[0])
            centres = kmeans(book.detach().cpu(), k, self.cfg["cluster_iters"], self.gen, snap=False)
            labels = torch.cdist(book.detach().cpu(), centres).argmin(1).to(self.device)  # (K,)
            same = labels[:, None] == labels[None, :]  # (K, K)
            same.fill_diagonal_(False)
            self.same_cluster[level] = same

    def diversity_loss(self, level, idx_codes, e):
        """CE over the level's codebook: target a random other code of the same cluster as the item's code."""
        book = self.model.rq.codebooks[level]  # (K, d)
        rows = self.same_cluster[level][idx_codes]  # (B, K)
        valid = rows.any(1)  # items whose code is not alone in its cluster
        if not valid.any():
            return e.sum() * 0.0
        pos = torch.multinomial(rows[valid].float().cpu(), 1, generator=self.gen).squeeze(1).to(e.device)  # (B',)
        sim = e[valid] @ book.t()  # (B', K)
        sim = sim.masked_fill(F.one_hot(idx_codes[valid], book.shape[0]).bool(), float("-inf"))
        return F.cross_entropy(sim, pos)

    def extra_loss(self, idx, z_q, codes, vecs):
        out = {}
        if self.cfg["alpha"] > 0:
            cf = self.cf[idx]  # (B, e_dim)
            logits = z_q @ cf.t()  # (B, B)
            out["cf"] = self.cfg["alpha"] * F.cross_entropy(logits, torch.arange(len(idx), device=logits.device))
        if self.cfg["beta"] > 0:
            div = torch.stack([self.diversity_loss(lv, codes[:, lv], vecs[lv]) for lv in range(len(vecs))]).mean()
            out["div"] = self.cfg["beta"] * div
        return out


def train_letter(emb, cf_emb, cfg, seed=42, device="cpu", logger=None, item_keys=None):
    """(codes (n, L) int64 before disambiguation, raw nearest-code codes (n, L), trainer) of LETTER on ``emb`` (n, D)
    with collaborative embeddings ``cf_emb`` (n, d) in the same item order; ``item_keys`` as in ``train_rqvae``."""
    trainer = LetterTrainer(emb, cf_emb, cfg, seed, device, logger, item_keys).fit()
    raw = trainer.codes()
    return trainer.resolve_collisions(raw), raw, trainer
