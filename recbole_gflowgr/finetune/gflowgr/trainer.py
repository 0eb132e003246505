"""GFlowGR trainer (arXiv 2506.16114, Eq. 7): ``L = L_SFT + lambda * mean(w * L_GFN)``.

Per batch: the encoder runs once; the positive item and ``N`` augmented items (adaptive sampler on the
collaborative model's scores, ``sampler.py``) are teacher-forced through the decoder as ``1 + N`` trajectories
sharing the encoder states; their constrained token log-probs are the forward policy, the comprehensive reward
(``reward.py``) is the terminal flow, the uncertainty weights (``weights.py``) weight each trajectory and the
flow loss (``losses.py``: TB, DB or SubTB) is computed with the learnable heads of ``heads.py``.
Only RecBole's ``_train_epoch`` (to pass our loss function) and ``_build_optimizer`` (log Z's group) are overridden.
"""
import torch
import torch.nn.functional as F

from recbole_gflowgr.errors import ConfigError
from recbole_gflowgr.finetune.common import ensure_scorer
from recbole_gflowgr.finetune.gflowgr.heads import FlowHeads
from recbole_gflowgr.finetune.gflowgr.losses import detailed_balance, subtrajectory_balance, trajectory_balance
from recbole_gflowgr.finetune.gflowgr.reward import comprehensive_reward
from recbole_gflowgr.finetune.gflowgr.sampler import AdaptiveSampler
from recbole_gflowgr.finetune.gflowgr.weights import uncertainty_weights
from recbole_gflowgr.model.beam_search import sequence_log_probs
from recbole_gflowgr.numerics import check_log_z
from recbole_gflowgr.trainer import GRTrainer


class GFlowGRTrainer(GRTrainer):
    @staticmethod
    def check_config(config):
        """Fail on impossible hyperparameters before anything trains (called by quick_start.run)."""
        if config["gflowgr_lambda"] is None or config["gflowgr_lambda"] < 0:
            raise ConfigError(f"gflowgr_lambda={config['gflowgr_lambda']} must be >= 0 (weight of the GFlowNet loss)")
        if config["gflowgr_n_aug"] is None or config["gflowgr_n_aug"] < 0:
            raise ConfigError(f"gflowgr_n_aug={config['gflowgr_n_aug']} must be >= 0 (0 = no augmented trajectories)")
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
        self.scorer = None
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
        self.stats = {"log_z": 0.0, "reward": 0.0, "weight": 0.0}
        losses = super()._train_epoch(train_data, epoch_idx, loss_func=self.gflowgr_loss, show_progress=show_progress)
        for key, total in self.stats.items():
            mean = total / max(1, self.batch_idx)
            self.logger.info(f"epoch {epoch_idx} gflowgr mean {key}: {mean:.4f}")
            self.tensorboard.add_scalar(f"gflowgr/{key}", mean, epoch_idx)
        return losses

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

        scores = self.scorer.score(item_seq, item_len)  # (B, n_items) in [0, 1]
        exclude = torch.zeros_like(scores, dtype=torch.bool)
        exclude[:, 0] = True
        exclude.scatter_(1, item_seq, True)
        exclude.scatter_(1, pos.unsqueeze(1), True)
        aug = self.sampler.sample(scores, exclude, self.curriculum_progress(), self.generator)  # (B, N)
        items = torch.cat([pos.unsqueeze(1), aug], dim=1)  # (B, 1+N) RecBole ids, positive first

        is_pos = torch.zeros_like(items, dtype=torch.bool)
        is_pos[:, 0] = True
        codes = model.target_tokens(items)  # (B, 1+N, L)
        reward, log_r, parts = comprehensive_reward(
            is_pos, scores.gather(1, items), codes, codes[:, 0], use_aug=cfg["gflowgr_reward_aug"],
            use_cm=cfg["gflowgr_reward_cm"], use_tok=cfg["gflowgr_reward_tok"], eps=cfg["gflowgr_reward_eps"],
            exponent=cfg["gflowgr_reward_exponent"])  # (B, 1+N) each
        weights = uncertainty_weights(parts["aug"], parts["cm"], enabled=cfg["gflowgr_weights"])  # (B, 1+N)

        B, K = items.shape
        sft_sum, gfn_sum, log_z_sum = 0.0, 0.0, 0.0
        for rows in model.length_groups(interaction):
            rows = torch.arange(B, device=items.device) if rows is None else rows  # (G,)
            sft, per_traj, log_z = self._group_losses(interaction, rows, items[rows], log_r[rows])
            sft_sum = sft_sum + sft.sum()
            gfn_sum = gfn_sum + (weights[rows] * per_traj).sum()
            log_z_sum += float(log_z.detach().sum())
        self.stats["log_z"] += log_z_sum / B
        self.stats["reward"] += float(reward.mean())
        self.stats["weight"] += float(weights.mean())
        self.batch_idx += 1
        return sft_sum / B, self.lamda * gfn_sum / (B * K)

    def _group_losses(self, interaction, rows, items, log_r):
        """Per-example SFT loss (G,), per-trajectory flow loss (G, 1+N) and log Z (G,) of the rows ``rows``."""
        model = self.model
        ids, mask = model.encoder_inputs(interaction, rows)  # (G, S) trimmed to the group's longest history
        enc = model.t5.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state  # (G, S, d)
        log_pf, hidden = sequence_log_probs(model.t5, None, mask, model.trie, items - 1, encoder_outputs=enc,
                                            return_steps=True, return_hidden=True)[1:]  # (G,1+N,L), (G,1+N,L,d)
        # SFT (Eq. 1) on the positive, from the same decoder pass: full-vocabulary next-token cross-entropy
        labels = model.target_tokens(items[:, 0])  # (G, L)
        logits = model.token_logits(hidden[:, 0])  # (G, L, V)
        sft = F.cross_entropy((logits / model.temperature).flatten(0, 1), labels.flatten(), reduction="none")
        sft = sft.view(labels.shape).sum(1)  # (G,)

        G, K, L = log_pf.shape
        heads = model.gflow_heads
        if self.flow_loss == "tb":
            log_z = heads.log_z(enc, mask)  # (G,)
            per_traj = trajectory_balance(log_z.repeat_interleave(K), log_pf.reshape(G * K, L), log_r.reshape(-1))
        else:
            log_f = heads.log_flow(hidden).reshape(G * K, L)  # (G*K, L)
            if self.flow_loss == "db":
                per_traj = detailed_balance(log_f, log_pf.reshape(G * K, L), log_r.reshape(-1))
            else:
                per_traj = subtrajectory_balance(log_f, log_pf.reshape(G * K, L), log_r.reshape(-1),
                                                 lamda=self.config["gflowgr_subtb_lambda"])
            log_z = log_f.view(G, K, L)[:, 0, 0]  # log F(s_0) = log Z, one per example
        check_log_z(self, log_z)  # non-finite: stop with a clear error; beyond gflowgr_logz_bound: warn
        return sft, per_traj.view(G, K), log_z
