"""Learnable GFlowNet estimators of GFlowGR (§2): log Z and the state flow F(s).

* ``log_z``: TB's log partition function, either one global scalar or conditioned on the encoded history
  (masked mean of the encoder states → MLP), config ``gflowgr_logz: global | conditional``. Its parameters
  form their own optimiser group (``gflowgr_logz_lr``), as is usual for TB.
* ``log_flow``: DB/SubTB's log F(s_t), an MLP on the decoder state that predicts token t (the prefix s_t).
"""
import torch
from torch import nn


def _mlp(d):
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))


class FlowHeads(nn.Module):
    def __init__(self, d_model, logz="global"):
        super().__init__()
        if logz not in ("global", "conditional"):
            raise ValueError(f"gflowgr_logz='{logz}': use global or conditional")
        self.logz_mode = logz
        self.logz = nn.Parameter(torch.zeros(1)) if logz == "global" else _mlp(d_model)
        self.flow = _mlp(d_model)

    def logz_parameters(self):
        return [self.logz] if self.logz_mode == "global" else list(self.logz.parameters())

    def log_z(self, enc, mask):
        """(B,) log Z for encoder states (B, S, d) with attention mask (B, S)."""
        if self.logz_mode == "global":
            return self.logz.expand(enc.shape[0])
        m = mask.unsqueeze(-1).to(enc.dtype)  # (B, S, 1)
        pooled = (enc * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, d)
        return self.logz(pooled).squeeze(-1)  # (B,)

    def log_flow(self, hidden):
        """(..., L) log F(s_t) from decoder states (..., L, d)."""
        return self.flow(hidden).squeeze(-1)
