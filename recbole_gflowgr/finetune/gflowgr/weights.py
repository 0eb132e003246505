"""Uncertainty weights of the GFlowNet loss terms (GFlowGR, arXiv 2506.16114, Eq. 8).

The augmentation reward ``R_aug`` (1 = observed, 0 = augmented) and the collaborative model's score ``R_cm``
(in ``[0, 1]``) are two estimates of how good a trajectory is. Where they disagree the reward is uncertain, so
that trajectory's loss is down-weighted. The exact form used here::

    u_k = 1 / (1 + |R_aug,k - R_cm,k|)           in [1/2, 1] for R_cm in [0, 1]
    w_k = u_k / mean_j(u_j)                       mean over every trajectory j of the batch (all B x (1+N))

so the weights average to exactly 1 over the batch (the loss scale ``lambda`` keeps its meaning). With
``enabled=False`` (the "w/o UW" ablation) every weight is 1. Weights are detached: they scale the loss but are
not trained.
"""
from __future__ import annotations

import torch

__all__ = ["uncertainty_weights"]


def uncertainty_weights(r_aug: torch.Tensor, r_cm: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Per-trajectory weights ``w = u / mean(u)``, ``u = 1 / (1 + |R_aug - R_cm|)`` (GFlowGR Eq. 8).

    Args:
        r_aug: augmentation rewards, any shape, e.g. ``(B, 1+N)``.
        r_cm: collaborative-model rewards, same shape as ``r_aug``.
        enabled: ``False`` returns all ones (ablation).

    Returns:
        Detached float tensor of the same shape, mean 1 over all its elements (empty in, empty out).
    """
    if r_aug.shape != r_cm.shape:
        raise ValueError(f"r_aug and r_cm must have the same shape, got {tuple(r_aug.shape)} and {tuple(r_cm.shape)}")
    dtype = r_cm.dtype if r_cm.is_floating_point() else torch.get_default_dtype()
    if not enabled or r_aug.numel() == 0:
        return torch.ones(r_aug.shape, dtype=dtype, device=r_aug.device)
    diff = (r_aug.detach().to(dtype) - r_cm.detach().to(dtype)).abs()  # (B, 1+N)
    u = 1.0 / (1.0 + diff)  # (B, 1+N), in (0, 1]
    return u / u.mean()
