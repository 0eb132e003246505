"""RQ-VAE item tokenizer of TIGER (Rajput et al., 2023), trained with torch on item text embeddings.

Encoder MLP -> ``e_dim`` latent z -> residual quantisation with ``len(num_emb_list)`` codebooks -> decoder MLP.
Loss = reconstruction (MSE) + ``quant_loss_weight`` * mean over levels of (||sg[r_l] - e_l||^2 +
``commitment_weight`` * ||r_l - sg[e_l]||^2), with a straight-through estimator from z_q to z.
Codebooks start from k-means of the (residual) latents of all items, each centroid then moved onto its nearest
item (so every initial code vector is a real residual); codes no item used during an epoch are re-initialised to
random residuals of that epoch's last batch. The evaluated model with the lowest collision rate is kept (as LETTER's
trainer does); with ``collision_sk_rounds`` > 0 (LETTER) colliding items are re-assigned on the last level by Sinkhorn.
:class:`RQVAETrainer` has hooks the LETTER trainer extends.
"""
import time
from logging import getLogger

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "sgd": torch.optim.SGD}


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last), Xavier-normal weights as in TIGER/LETTER."""

    def __init__(self, dims, dropout=0.0):
        super().__init__()
        mods = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            mods += [nn.Dropout(dropout), nn.Linear(d_in, d_out)]
            if i < len(dims) - 2:
                mods.append(nn.ReLU())
        self.net = nn.Sequential(*mods)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def sq_dist(x, c):
    """(N, K) squared Euclidean distances between rows of x (N, d) and c (K, d)."""
    return (x.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1)[None, :] - 2 * x @ c.t()).clamp(min=0)


@torch.no_grad()
def kmeans(x, k, iters=100, generator=None, snap=True):
    """(k, d) centres of x (N, d): k-means++ seeding from data points, Lloyd iterations (an empty cluster is re-seeded
    with the point farthest from its centre), then, if ``snap``, every centre moved onto its nearest distinct point."""
    x = x.detach().float().cpu()
    n = x.shape[0]
    xx = x.pow(2).sum(1)  # (N,)

    def dist(c):  # (N, k)
        return (xx[:, None] + c.pow(2).sum(1)[None, :] - 2 * x @ c.t()).clamp(min=0)

    chosen = [int(torch.randint(n, (1,), generator=generator))]
    d2 = dist(x[chosen[0]][None]).squeeze(1)  # (N,) distance to the nearest chosen seed
    for _ in range(1, k):
        total = d2.sum()
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
        chosen.append(int(torch.multinomial(probs, 1, generator=generator)))
        d2 = torch.minimum(d2, dist(x[chosen[-1]][None]).squeeze(1))
    c = x[chosen].clone()  # (k, d)
    for _ in range(iters):
        dd = dist(c)  # (N, k)
        assign = dd.argmin(1)  # (N,)
        onehot = F.one_hot(assign, k).float()  # (N, k)
        counts = onehot.sum(0)  # (k,)
        new = torch.where(counts[:, None] > 0, (onehot.t() @ x) / counts.clamp(min=1)[:, None], c)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = dd.gather(1, assign[:, None]).squeeze(1).argsort(descending=True, stable=True)[:len(empty)]
            new[empty[:len(far)]] = x[far]
        if torch.equal(new, c):
            break
        c = new
    if snap:
        dd = dist(c).t()  # (k, N)
        used = torch.zeros(n, dtype=torch.bool)
        for j in range(k):
            i = int((dd[j].masked_fill(used, float("inf")) if j < n else dd[j]).argmin())
            used[i] = True
            c[j] = x[i]
    return c


@torch.no_grad()
def sinkhorn(cost, epsilon, iters=50):
    """Balanced soft assignment Q (B, K) of B points to K codes for ``cost`` (B, K): rows sum to 1, columns to about
    B/K. As in LETTER, costs are rescaled to [-1, 1] and the iterations run on exp(-cost / epsilon) in float64 (each
    row shifted so that its best code has weight 1: exponents >= -2/epsilon, no overflow, underflow only < 1e-290)."""
    cost = cost.double()
    mid = (cost.max() + cost.min()) / 2
    amp = (cost.max() - mid).clamp(min=1e-5)
    logits = -((cost - mid) / amp) / epsilon  # (B, K)
    q = torch.exp(logits - logits.max(1, keepdim=True).values)  # (B, K)
    b, k = q.shape
    for _ in range(iters):
        q = q / q.sum(0, keepdim=True).clamp(min=1e-300) * (b / k)  # each code gets B/K
        q = q / q.sum(1, keepdim=True).clamp(min=1e-300)  # each point sums to 1
    return q


class ResidualQuantizer(nn.Module):
    def __init__(self, num_emb_list, e_dim):
        super().__init__()
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(k, e_dim)) for k in num_emb_list])

    def forward(self, z, sk_epsilons=None, sk_iters=50):
        """z (B, d) -> (z_q straight-through (B, d), codes (B, L), code vectors [(B, d)] * L, residuals [(B, d)] * L).
        Level l uses Sinkhorn (balanced) assignment where ``sk_epsilons[l] > 0``, nearest code otherwise."""
        residual, codes, vecs, residuals = z, [], [], []
        for level, book in enumerate(self.codebooks):
            residuals.append(residual)
            dist = sq_dist(residual.detach(), book.detach())  # (B, K)
            eps = sk_epsilons[level] if sk_epsilons else 0.0
            idx = sinkhorn(dist, eps, sk_iters).argmax(1) if eps > 0 else dist.argmin(1)  # (B,)
            e = book[idx]  # (B, d)
            codes.append(idx)
            vecs.append(e)
            residual = residual - e.detach()  # deeper levels' commitment: gradient to the encoder only
        z_q = z + (sum(vecs) - z).detach()
        return z_q, torch.stack(codes, 1), vecs, residuals


class RQVAE(nn.Module):
    def __init__(self, in_dim, layers, e_dim, num_emb_list, dropout=0.0):
        super().__init__()
        self.encoder = MLP([in_dim] + list(layers) + [e_dim], dropout)
        self.decoder = MLP([e_dim] + list(layers)[::-1] + [in_dim], dropout)
        self.rq = ResidualQuantizer(num_emb_list, e_dim)

    def forward(self, x, sk_epsilons=None, sk_iters=50):
        z = self.encoder(x)  # (B, e_dim)
        z_q, codes, vecs, residuals = self.rq(z, sk_epsilons, sk_iters)
        return self.decoder(z_q), z_q, codes, vecs, residuals


def collision_groups(codes):
    """Lists of row indices that share the same full code, groups of 2 or more only."""
    groups = {}
    for i, row in enumerate(map(tuple, codes.tolist())):
        groups.setdefault(row, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def distinct_assignment(q, same, held=()):
    """(g,) codes from a plan q (g, K): rows in order of their best plan weight take their best code still free
    (not in ``held``, not taken by another row); a row ``same`` as an already placed row shares its code."""
    taken, out = set(held), np.full(q.shape[0], -1, dtype=np.int64)
    for i in q.max(1).values.argsort(descending=True, stable=True).tolist():
        twins = [j for j in same[i].nonzero().flatten().tolist() if out[j] >= 0]
        if twins:
            out[i] = out[twins[0]]
            continue
        free = [c for c in q[i].argsort(descending=True, stable=True).tolist() if c not in taken]
        out[i] = free[0] if free else int(q[i].argmax())
        taken.add(int(out[i]))
    return out


class RQVAETrainer:
    """Trains an :class:`RQVAE` on ``emb`` (n, D) with config ``cfg`` (see properties/tokenizer/rqvae.yaml)."""

    def __init__(self, emb, cfg, seed=42, device="cpu", logger=None, item_keys=None):
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        # (n,) int per item, equal for items with the same text: those stay together when collisions are resolved
        self.item_keys = None if item_keys is None else torch.as_tensor(np.asarray(item_keys, dtype=np.int64))
        self.logger = logger or getLogger()
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.x = torch.as_tensor(np.asarray(emb, dtype=np.float32), device=self.device)  # (n, D)
        self.model = RQVAE(self.x.shape[1], cfg["layers"], cfg["e_dim"], cfg["num_emb_list"],
                           cfg["dropout"]).to(self.device)
        self.sk_epsilons = list(cfg.get("sk_epsilons") or [0.0] * len(cfg["num_emb_list"]))
        self.init_codes = None  # the codebooks right after k-means init (for tests / stats)
        self.history = []  # one row per evaluation
        self.best = None  # {"epoch", "collision_rate", "state"} of the lowest-collision evaluation
        self.filled = 0  # codes given an item by fill_dead_codes after training

    def _optimizer(self):
        params, lr, wd = self.parameters(), self.cfg["lr"], self.cfg["weight_decay"]
        name = self.cfg["optimizer"].lower()
        return OPTIMIZERS[name](params, lr=lr, weight_decay=wd)

    def parameters(self):
        return list(self.model.parameters())

    @torch.no_grad()
    def latents(self):
        self.model.eval()
        return torch.cat([self.model.encoder(xb) for xb in self.x.split(8192)])  # (n, e_dim)

    @torch.no_grad()
    def kmeans_init(self):
        """Codebook of level l = k-means of the level-l residuals of all items (each code a real residual)."""
        residual = self.latents()
        for book in self.model.rq.codebooks:
            if self.cfg["kmeans_init"]:
                book.data.copy_(kmeans(residual, book.shape[0], self.cfg["kmeans_iters"], self.gen))
            else:
                init = torch.empty(book.shape).uniform_(-1.0 / book.shape[0], 1.0 / book.shape[0], generator=self.gen)
                book.data.copy_(init)  # drawn on the CPU generator, whatever the device
            residual = residual - book[sq_dist(residual, book).argmin(1)]
        self.init_codes = [b.detach().clone().cpu() for b in self.model.rq.codebooks]

    # --- hooks for LETTER ---
    def on_epoch_start(self, epoch):
        pass

    def extra_loss(self, idx, z_q, codes, vecs):
        """Additional loss terms {name: tensor} for the batch of item indices ``idx`` (B,)."""
        return {}

    def step_losses(self, idx):
        xb = self.x[idx]  # (B, D)
        x_hat, z_q, codes, vecs, residuals = self.model(xb, self.sk_epsilons, self.cfg["sk_iters"])
        recon = F.mse_loss(x_hat, xb) if self.cfg["loss_type"] == "mse" else F.l1_loss(x_hat, xb)
        quant = torch.stack([F.mse_loss(e, r.detach()) + self.cfg["commitment_weight"] * F.mse_loss(r, e.detach())
                             for e, r in zip(vecs, residuals)]).mean()
        losses = {"recon": recon, "quant": self.cfg["quant_loss_weight"] * quant}
        losses.update(self.extra_loss(idx, z_q, codes, vecs))
        return losses, codes, residuals

    @torch.no_grad()
    def reinit_dead_codes(self, usage, residuals):
        """Codes unused during the epoch -> random residuals of the last batch at their level."""
        n_dead = 0
        for level, book in enumerate(self.model.rq.codebooks):
            dead = (usage[level] == 0).nonzero().flatten()
            if len(dead):
                res = residuals[level].detach()
                pick = torch.randint(res.shape[0], (len(dead),), generator=self.gen).to(res.device)
                book.data[dead] = res[pick]
                n_dead += len(dead)
        return n_dead

    def fit(self):
        cfg, n = self.cfg, self.x.shape[0]
        start = time.time()
        self.kmeans_init()
        opt = self._optimizer()
        epochs, bs = cfg["epochs"], min(cfg["batch_size"], n)
        self.logger.info(f"{type(self).__name__}: {n} items, {epochs} epochs, batch {bs}, "
                         f"{sum(p.numel() for p in self.parameters())} parameters")
        for epoch in range(epochs):
            self.model.train()
            self.on_epoch_start(epoch)
            usage = [torch.zeros(b.shape[0], device=self.device) for b in self.model.rq.codebooks]
            totals = {}
            for idx in torch.randperm(n, generator=self.gen).to(self.device).split(bs):
                losses, codes, residuals = self.step_losses(idx)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"RQ-VAE loss is {loss.item()} at epoch {epoch}; lower lr")
                opt.zero_grad()
                loss.backward()
                opt.step()
                for level in range(codes.shape[1]):
                    usage[level] += torch.bincount(codes[:, level], minlength=usage[level].shape[0])
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + v.item() * len(idx) / n
            dead = self.reinit_dead_codes(usage, residuals) if cfg["dead_code_reinit"] and epoch < epochs - 1 else 0
            if epoch == epochs - 1 or (cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0):
                self.evaluate(epoch, totals, dead, start)
        if self.best is not None:
            self.model.load_state_dict(self.best["state"])
            self.logger.info(f"kept the model of epoch {self.best['epoch']}: lowest collision rate "
                             f"{self.best['collision_rate']:.4%}")
        self.filled = self.fill_dead_codes(cfg.get("fill_dead_codes") or [])
        return self

    @torch.no_grad()
    def fill_dead_codes(self, levels):
        """After training: each code of a level in ``levels`` that no item takes (nearest code) becomes the residual
        of the item farthest from its code in the fullest cluster of that level, which then takes it (distance 0).
        Deeper levels are not retrained; their nearest codes follow. Returns the number of codes filled."""
        filled, residual = 0, self.latents()  # (n, d)
        for level, book in enumerate(self.model.rq.codebooks):
            for _ in range(book.shape[0] if level in levels else 0):  # a fill may empty another code: repeat
                idx = sq_dist(residual, book).argmin(1)  # (n,)
                counts = torch.bincount(idx, minlength=book.shape[0])  # (K,)
                dead, big = (counts == 0).nonzero().flatten(), int(counts.argmax())
                members = (idx == big).nonzero().flatten()
                dist = sq_dist(residual[members], book[big:big + 1]).squeeze(1)  # (m,)
                if not len(dead) or counts[big] < 2 or dist.max() <= 0:
                    break
                book.data[dead[0]] = residual[members[dist.argmax()]]
                filled += 1
            residual = residual - book[sq_dist(residual, book).argmin(1)]
        if filled:
            self.logger.info(f"fill_dead_codes: {filled} unused codes of levels {list(levels)} given an item")
        return filled

    @torch.no_grad()
    def evaluate(self, epoch, totals, dead, start):
        """Log losses and the nearest-code collision rate; remember the model with the lowest rate (if
        ``keep_best_collision``: LETTER's trainer keeps that checkpoint too)."""
        codes = self.codes()
        coll = 1 - len(set(map(tuple, codes.tolist()))) / len(codes)
        row = {"epoch": epoch + 1, **{k: round(v, 5) for k, v in totals.items()}, "dead_reinit": dead,
               "collision_rate": round(coll, 5), "s": round(time.time() - start, 1)}
        self.history.append(row)
        self.logger.info(" ".join(f"{k}={v}" for k, v in row.items()))
        if self.cfg["keep_best_collision"] and (self.best is None or coll < self.best["collision_rate"]):
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"epoch": epoch + 1, "collision_rate": coll, "state": state}

    @torch.no_grad()
    def resolve_collisions(self, codes):
        """Items that share a full code get their last-level code re-assigned from a Sinkhorn plan over the last
        codebook computed within their group, for up to ``collision_sk_rounds`` rounds (LETTER's generate_indices.py).
        ``collision_assignment``: 'argmax' = each item's argmax of the plan (LETTER's code; near-duplicates often
        collide again); 'distinct' = the plan rounded so that each code takes at most one item of the group and none
        held by another item with the same prefix, while items with the same text (``item_keys``; without keys:
        identical inputs) stay together, as in LETTER; items with different texts but one embedding (e.g. case
        variants under an uncased encoder) are told apart. ``codes``: the nearest-code codes (n, L)."""
        eps = self.sk_epsilons[-1] if self.sk_epsilons[-1] > 0 else 0.003
        _, _, _, residuals = self.model.rq(self.latents())  # nearest codes: the same prefixes as ``codes``
        last, book = residuals[-1].cpu(), self.model.rq.codebooks[-1].detach().cpu()  # (n, d), (K, d)
        x = self.x.cpu()
        tol = 1e-4 * x.norm(dim=1).mean()  # inputs closer than this count as identical
        codes, done = codes.copy(), set()
        for _ in range(self.cfg["collision_sk_rounds"]):
            # a group seen before would get the same (deterministic) answer again: only new groups are re-assigned
            groups = [g for g in collision_groups(codes) if tuple(g) not in done]
            if not groups:
                break
            by_prefix = {}
            for i, row in enumerate(map(tuple, codes[:, :-1].tolist())):
                by_prefix.setdefault(row, []).append(i)
            for group in groups:
                done.add(tuple(group))
                q = sinkhorn(sq_dist(last[group], book), eps, self.cfg["sk_iters"])  # (g, K)
                if self.cfg["collision_assignment"] == "argmax":
                    codes[group, -1] = q.argmax(1).numpy()
                    continue
                members = set(group)
                held = {int(codes[j, -1]) for j in by_prefix[tuple(codes[group[0], :-1].tolist())] if j not in members}
                if self.item_keys is not None:
                    keys = self.item_keys[group]  # (g,)
                    same = keys[:, None] == keys[None, :]  # (g, g)
                else:
                    same = torch.cdist(x[group], x[group], compute_mode="donot_use_mm_for_euclid_dist") <= tol
                codes[group, -1] = distinct_assignment(q, same, held)
        return codes

    @torch.no_grad()
    def codes(self, sk_epsilons=None, idx=None):
        """(n, L) int64 codes of all items (or of ``idx``): nearest code per level, Sinkhorn where eps > 0."""
        self.model.eval()
        x = self.x if idx is None else self.x[idx]
        out = [self.model.rq(self.model.encoder(xb), sk_epsilons, self.cfg["sk_iters"])[1] for xb in x.split(8192)]
        return torch.cat(out).cpu().numpy().astype(np.int64)


def train_rqvae(emb, cfg, seed=42, device="cpu", logger=None, item_keys=None):
    """(codes (n, L) int64 before disambiguation, trainer) of a TIGER RQ-VAE trained on ``emb`` (n, D);
    ``item_keys`` (n,): equal for items of the same text (see ``resolve_collisions``)."""
    trainer = RQVAETrainer(emb, cfg, seed, device, logger, item_keys).fit()
    return trainer.resolve_collisions(trainer.codes()), trainer
