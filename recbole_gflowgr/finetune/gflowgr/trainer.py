"""GFlowGR trainer (arXiv 2506.16114, Eq. 7): ``L = L_SFT + lambda * L_GFN``.

Per batch: the encoder runs once; the positive item and ``N`` augmented items (adaptive sampler on the
collaborative model's scores, ``sampler.py``) are teacher-forced through the decoder as ``1 + N`` trajectories
sharing the encoder states; their constrained token log-probs at the model's SFT temperature are the forward policy,
the comprehensive reward (``reward.py``, R_tok over the semantic levels) is the terminal flow, the uncertainty
weights (``weights.py``) weight each trajectory, the flow loss (``losses.py``: TB, DB or SubTB) is computed with the
learnable heads of ``heads.py`` and reduced as ``gflowgr_reduction`` says (``weights.reduce_flow_loss``).
Only RecBole's ``_train_epoch`` (to pass our loss function) and ``_build_optimizer`` (log Z's group) are overridden.

Per epoch it logs (and writes to tensorboard under ``gflowgr/``) the mean squared flow-loss residual, log Z, the
mean log P_F of the positive and of the augmented trajectories and the positive's probability; per-batch values
are kept as detached tensors and read once per epoch (no host sync per batch).
"""
import torch
import torch.nn.functional as F

from recbole_gflowgr.finetune.common import ensure_scorer, reward_terms
from recbole_gflowgr.finetune.gflowgr.heads import FlowHeads
from recbole_gflowgr.finetune.gflowgr.losses import detailed_balance, subtrajectory_balance, trajectory_balance
from recbole_gflowgr.finetune.gflowgr.sampler import AdaptiveSampler
from recbole_gflowgr.finetune.gflowgr.weights import reduce_flow_loss, uncertainty_weights
from recbole_gflowgr.model.beam_search import sequence_log_probs
from recbole_gflowgr.trainer.base import GRTrainer
from recbole_gflowgr.trainer.numerics import check_log_z

STATS = ("residual", "log_z", "logpf_pos", "logpf_aug", "p_pos", "reward", "weight")


class GFlowGRTrainer(GRTrainer):
    @staticmethod
    def check_config(config):
        """The curriculum sampler of a validated config (called by quick_start.run before anything trains). Types,
        ranges and choices of the ``gflowgr_*`` keys are checked once, at start-up, by the schema of
        ``properties/finetune/gflowgr.yaml`` (``foundation/validation.py``); the sampler checks its own combination."""
        return AdaptiveSampler(config["gflowgr_n_aug"], mode=config["gflowgr_sampler"],
                               start=config["gflowgr_curriculum_start"], end=config["gflowgr_curriculum_end"],
                               window=config["gflowgr_curriculum_window"],
                               schedule=config["gflowgr_curriculum_schedule"])

    def __init__(self, config, model):
        self.flow_loss = config["finetune"].split("-", 1)[1]  # tb | db | subtb
        self.lamda = config["gflowgr_lambda"]
        self.sampler = self.check_config(config)
        if not hasattr(model, "gflow_heads"):
            model.gflow_heads = FlowHeads(config["d_model"], config["gflowgr_logz"]).to(config["device"])
        self.scorer, self.logz_ready = None, False
        super().__init__(config, model)
        self.generator = torch.Generator(device=self.device).manual_seed(config["seed"])

    def _build_optimizer(self, **kwargs):
        logz = {id(p) for p in self.model.gflow_heads.logz_parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in logz]
        groups = [{"params": rest},
                  {"params": self.model.gflow_heads.logz_parameters(), "lr": self.config["gflowgr_logz_lr"],
                   "weight_decay": 0.0}]
        return super()._build_optimizer(params=groups, **kwargs)

    # ----- per epoch ---------------------------------------------------------------------------------------------
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        ensure_scorer(self, train_data)  # self.scorer: the collaborative model, loaded on first use
        self.epoch_idx, self.n_batches, self.batch_idx = epoch_idx, len(train_data), 0
        self.stats = {}
        losses = super()._train_epoch(train_data, epoch_idx, loss_func=self.gflowgr_loss, show_progress=show_progress)
        self.log_stats(epoch_idx)
        return losses

    def record(self, **values):
        """Add one batch's statistics (0-dim detached tensors: no host sync) to the epoch's running sums."""
        for key, value in values.items():
            self.stats[key] = self.stats.get(key, 0.0) + value.detach().float()

    def log_stats(self, epoch_idx):
        """The epoch means of the batch statistics, read once (one host sync per epoch): log lines and tensorboard."""
        n = max(1, self.batch_idx)
        means = {key: float(self.stats[key]) / n for key in STATS if key in self.stats}
        if not means:
            return
        for key, mean in means.items():
            self.tensorboard.add_scalar(f"gflowgr/{key}", mean, epoch_idx)
        self.logger.info(f"epoch {epoch_idx} gflowgr mean residual^2 {means['residual']:.4f}, log Z "
                         f"{means['log_z']:.4f}, reward {means['reward']:.4f}, weight {means['weight']:.4f}")
        self.logger.info(f"epoch {epoch_idx} gflowgr mean log P_F positive {means['logpf_pos']:.4f}, augmented "
                         f"{means.get('logpf_aug', float('nan')):.4f}, P_F(positive) {means['p_pos']:.6f}")

    # ----- per batch ---------------------------------------------------------------------------------------------
    def curriculum_progress(self):
        """Fraction of fine-tuning done, over all ``epochs`` from epoch 0: a function of (epoch, batch) only, so a
        resumed run (``resume.py``) continues the curriculum where it stopped."""
        done = self.epoch_idx + self.batch_idx / max(1, self.n_batches)
        return min(1.0, done / max(1, self.epochs))

    def gflowgr_loss(self, interaction):
        """(L_SFT, lambda * L_GFN) for one batch; RecBole sums the tuple and logs both parts.

        Sampling, rewards and weights are computed for the whole batch; the encoder and decoder run per history-
        length group (the model's ``length_groups``, as SFT does), so short histories are not padded to the longest
        one. The losses are the batch means, as without groups."""
        model, cfg = self.model, self.config
        pos = interaction[model.POS_ITEM_ID]  # (B,)
        item_seq, item_len = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]

        scores = self.scorer.score(item_seq, item_len, pos=pos)  # (B, n_items) in [0, 1]
        exclude = torch.zeros_like(scores, dtype=torch.bool)
        exclude[:, 0] = True
        exclude.scatter_(1, item_seq, True)
        exclude.scatter_(1, pos.unsqueeze(1), True)
        aug = self.sampler.sample(scores, exclude, self.curriculum_progress(), self.generator)  # (B, N)
        items = torch.cat([pos.unsqueeze(1), aug], dim=1)  # (B, 1+N) RecBole ids, positive first

        is_pos = torch.zeros_like(items, dtype=torch.bool)
        is_pos[:, 0] = True
        codes = model.target_tokens(items)  # (B, 1+N, L)
        reward, log_r, parts = reward_terms(cfg, model, is_pos, scores.gather(1, items), codes, codes[:, 0])  # (B, 1+N)
        weights = uncertainty_weights(parts["aug"], parts["cm"], enabled=cfg["gflowgr_weights"],
                                      normalise=cfg["gflowgr_weight_norm"])  # (B, 1+N)

        B, K = items.shape
        parts_by_group = []
        for rows in model.length_groups(interaction):
            rows = torch.arange(B, device=items.device) if rows is None else rows  # (G,)
            parts_by_group.append((rows, *self._group_losses(interaction, rows, items[rows], log_r[rows])))
        rows = torch.cat([g[0] for g in parts_by_group])  # (B,) batch rows in group order
        back = torch.argsort(rows)  # batch row -> position in the group order
        sft, per_traj, log_z, steps = (torch.cat([g[i] for g in parts_by_group])[back] for i in range(1, 5))
        log_pf = steps.detach().sum(-1)  # (B, 1+N)
        if self.flow_loss == "tb":  # on the whole batch: log Z (B,), the trajectories' step log-probs (B, 1+N, L)
            if not self.logz_ready:  # the buffer is read once per trainer (a host sync), not per batch
                if not bool(model.gflow_heads.logz_initialised):  # once per run: a resumed run keeps its log Z
                    # the output bias moves by `shift`, so every log Z of this batch does: the same graph, shifted
                    log_z = log_z + model.gflow_heads.init_log_z(log_z, log_r.reshape(-1), log_pf.reshape(-1))
                self.logz_ready = True
            per_traj = trajectory_balance(log_z.repeat_interleave(K), steps.reshape(B * K, -1),
                                          log_r.reshape(-1)).view(B, K)  # (B, 1+N)
        check_log_z(self, log_z)  # non-finite: stop with a clear error; beyond gflowgr_logz_bound: warn
        gfn = reduce_flow_loss(per_traj, weights, cfg["gflowgr_reduction"])  # per_traj (B, 1+N), log_pf (B, 1+N)
        self.record(residual=per_traj.mean(), log_z=log_z.mean(), logpf_pos=log_pf[:, 0].mean(),
                    p_pos=log_pf[:, 0].exp().mean(), reward=reward.mean(), weight=weights.mean())
        if K > 1:
            self.record(logpf_aug=log_pf[:, 1:].mean())
        self.batch_idx += 1
        return sft.mean(), self.lamda * gfn

    def _group_losses(self, interaction, rows, items, log_r):
        """Per-example SFT loss (G,), per-trajectory flow loss (G, 1+N; TB: zeros, computed on the whole batch by
        the caller), log Z (G,) and the trajectories' step log-probs (G, 1+N, L) of the rows ``rows``."""
        model = self.model
        ids, mask = model.encoder_inputs(interaction, rows)  # (G, S) trimmed to the group's longest history
        enc = model.t5.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # (G, S, d)
        log_pf, hidden = sequence_log_probs(model.t5, None, mask, model.trie, items - 1, encoder_outputs=enc,
                                            return_steps=True, return_hidden=True,
                                            temperature=model.temperature)[1:]  # (G,1+N,L), (G,1+N,L,d)
        # SFT (Eq. 1) on the positive, from the same decoder pass: full-vocabulary next-token cross-entropy
        labels = model.target_tokens(items[:, 0])  # (G, L)
        logits = model.token_logits(hidden[:, 0])  # (G, L, V)
        sft = F.cross_entropy((logits / model.temperature).flatten(0, 1), labels.flatten(), reduction="none")
        sft = sft.view(labels.shape).sum(1)  # (G,)

        G, K, L = log_pf.shape
        heads = model.gflow_heads
        if self.flow_loss == "tb":
            log_z = heads.log_z(enc, mask)  # (G,)
            per_traj = log_pf.new_zeros(G * K)  # TB: on the whole batch, after log Z's one-off initialisation
        else:
            log_f = heads.log_flow(hidden).reshape(G * K, L)  # (G*K, L)
            if self.flow_loss == "db":
                per_traj = detailed_balance(log_f, log_pf.reshape(G * K, L), log_r.reshape(-1))
            else:
                per_traj = subtrajectory_balance(log_f, log_pf.reshape(G * K, L), log_r.reshape(-1),
                                                 lamda=self.config["gflowgr_subtb_lambda"])
            log_z = log_f.view(G, K, L)[:, 0, 0]  # log F(s_0) = log Z, one per example
        return sft, per_traj.view(G, K), log_z, log_pf
