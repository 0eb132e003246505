"""Learnable GFlowNet estimators of GFlowGR (§2): log Z and the state flow F(s).

* ``log_z``: TB's log partition function, either conditioned on the encoded history (masked mean of the encoder
  states → MLP; the default, ``gflowgr_logz: conditional``: GFlowGR is a conditional GFlowNet, Z depends on the
  user, the more so as R_cm is normalised per user) or one global scalar (``global``). Its parameters form their
  own optimiser group (``gflowgr_logz_lr``), as is usual for TB.
* ``log_flow``: DB/SubTB's log F(s_t), an MLP on the decoder state that predicts token t (the prefix s_t).

log Z starts where TB's optimum is on the first batch (:meth:`FlowHeads.init_log_z`): the output bias is shifted
by ``mean(log R - sum_t log P_F) - mean(log Z)``, so that log Z does not spend the first epochs catching up from 0
(the committed industrial-scientific logs climbed 0.7 → 8.4 over 10 epochs). The buffer ``logz_initialised`` is
part of the state dict: a resumed run or a loaded fine-tuned checkpoint is not initialised again.
"""
import torch
from torch import nn


def _mlp(d):
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))


class FlowHeads(nn.Module):
    def __init__(self, d_model, logz="conditional"):
        super().__init__()
        if logz not in ("global", "conditional"):
            raise ValueError(f"gflowgr_logz='{logz}': use global or conditional")
        self.logz_mode = logz
        self.logz = nn.Parameter(torch.zeros(1)) if logz == "global" else _mlp(d_model)
        self.flow = _mlp(d_model)
        self.register_buffer("logz_initialised", torch.zeros((), dtype=torch.bool))

    def logz_parameters(self):
        return [self.logz] if self.logz_mode == "global" else list(self.logz.parameters())

    def log_z(self, enc, mask):
        """(B,) log Z for encoder states (B, S, d) with attention mask (B, S)."""
        if self.logz_mode == "global":
            return self.logz.expand(enc.shape[0])
        m = mask.unsqueeze(-1).to(enc.dtype)  # (B, S, 1)
        pooled = (enc * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, d)
        return self.logz(pooled).squeeze(-1)  # (B,)

    @torch.no_grad()
    def init_log_z(self, log_z, log_r, log_pf_sum):
        """Once (until ``logz_initialised``): shift log Z's output bias so that its mean over this batch equals the
        batch mean of TB's optimum ``log R - sum_t log P_F`` (``log_r``, ``log_pf_sum``: (T,) of every trajectory;
        ``log_z`` (B,) the current estimates). Returns the shift (a 0-dim tensor; 0.0 when already initialised); in a multi-process
        run the shift is averaged over the processes, so that their copies stay equal."""
        if bool(self.logz_initialised):
            return 0.0
        shift = (log_r.detach().float() - log_pf_sum.detach().float()).mean() - log_z.detach().float().mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(shift)
            shift = shift / torch.distributed.get_world_size()
        bias = self.logz if self.logz_mode == "global" else self.logz[-1].bias
        bias.add_(shift.to(bias.dtype))
        self.logz_initialised.fill_(True)
        return shift.to(log_z.dtype)

    def log_flow(self, hidden):
        """(..., L) log F(s_t) from decoder states (..., d)."""
        return self.flow(hidden).squeeze(-1)
