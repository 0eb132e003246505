"""Uncertainty weights of the GFlowNet loss terms and the loss's reduction (GFlowGR, arXiv 2506.16114, Eqs. 7-8).

The augmentation reward ``R_aug`` (1 = observed, 0 = augmented) and the collaborative model's score ``R_cm``
(in ``[0, 1]``) are two estimates of how good a trajectory is. Where they disagree the reward is uncertain, so
that trajectory's loss is down-weighted::

    w_k = 1 / (1 + |R_aug,k - R_cm,k|)           in [1/2, 1] for R_cm in [0, 1]     (Eq. 8, the default)
    w_k = u_k / mean_j(u_j)                       with ``normalise`` (gflowgr_weight_norm): mean 1 over the batch

With ``enabled=False`` (the "w/o Wt" ablation) every weight is 1. Weights are detached: they scale the loss but
are not trained.

:func:`reduce_flow_loss` turns the per-trajectory losses (B, 1+N) into the batch's scalar L_GFN:

* ``"sum"`` (default, the paper's Eq. 7): per user, the sum over its positive and its N augmented trajectories of
  ``w * L_GFN(tau)``, then the mean over the B users, as L_SFT is a per-user quantity averaged over the batch.
  Where the paper is ambiguous: Eq. 7 writes the GFlowNet term as a sum over the trajectories of one training
  example and does not say how a batch is reduced; we average over users, exactly as the SFT term is, so that
  lambda weighs the two per-user terms against each other and more augmented trajectories add weight (N is a
  real knob, as in the paper's Fig. 3); the weights are Eq. 8's un-normalised ``w``.
* ``"mean"`` (the earlier form): the mean over all B * (1+N) trajectories, usually with ``normalise``.

λ of one form in the other: ``lambda_sum = lambda_mean / ((1 + N) * mean(u))`` when ``"mean"`` uses normalised
weights (``mean(u)`` in [1/2, 1], the batch mean of the un-normalised weights), and ``lambda_mean / (1 + N)`` when
both use the same weights.
"""
from __future__ import annotations

import torch

__all__ = ["uncertainty_weights", "reduce_flow_loss", "REDUCTIONS"]

REDUCTIONS = ("sum", "mean")


def uncertainty_weights(r_aug: torch.Tensor, r_cm: torch.Tensor, enabled: bool = True,
                        normalise: bool = False) -> torch.Tensor:
    """Per-trajectory weights ``w = 1 / (1 + |R_aug - R_cm|)`` (GFlowGR Eq. 8), divided by their mean with
    ``normalise``.

    Args:
        r_aug: augmentation rewards, any shape, e.g. ``(B, 1+N)``.
        r_cm: collaborative-model rewards, same shape as ``r_aug``.
        enabled: ``False`` returns all ones (ablation).
        normalise: divide by the mean over all elements (mean 1 over the batch).

    Returns:
        Detached float tensor of the same shape (empty in, empty out).
    """
    if r_aug.shape != r_cm.shape:
        raise ValueError(f"r_aug and r_cm must have the same shape, got {tuple(r_aug.shape)} and {tuple(r_cm.shape)}")
    dtype = r_cm.dtype if r_cm.is_floating_point() else torch.get_default_dtype()
    if not enabled or r_aug.numel() == 0:
        return torch.ones(r_aug.shape, dtype=dtype, device=r_aug.device)
    diff = (r_aug.detach().to(dtype) - r_cm.detach().to(dtype)).abs()  # (B, 1+N)
    u = 1.0 / (1.0 + diff)  # (B, 1+N), in (0, 1]
    return u / u.mean() if normalise else u


def reduce_flow_loss(per_traj: torch.Tensor, weights: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Scalar L_GFN of per-trajectory losses ``per_traj`` (B, 1+N) and weights (B, 1+N): ``"sum"`` = mean over
    users of the per-user sum of ``w * L`` (Eq. 7), ``"mean"`` = mean of ``w * L`` over all B * (1+N)."""
    if per_traj.dim() != 2 or weights.shape != per_traj.shape:
        raise ValueError(f"per_traj and weights must both be (B, 1+N), got {tuple(per_traj.shape)} and "
                         f"{tuple(weights.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction='{reduction}': use sum or mean (gflowgr_reduction)")
    total = (weights * per_traj).sum()
    return total / per_traj.shape[0] if reduction == "sum" else total / max(1, per_traj.numel())
