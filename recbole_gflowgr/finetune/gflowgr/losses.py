"""GFlowNet flow-consistency losses over item-ID trajectories (GFlowGR, arXiv 2506.16114, §2, Eqs. 3-6).

An item's semantic ID is generated as ``L`` code tokens; the trajectory of one item is
``s_0 -> s_1 -> ... -> s_L`` where ``s_t`` is the decoded prefix of length ``t`` and ``s_L`` is the terminal
state ``x`` (the complete ID). Every prefix has exactly one parent, so the backward policy is deterministic:
``P_B = 1`` and ``log P_B = 0`` -- that is the default here (``log_pb=None``). ``log_pb`` is accepted for
generality (tensor broadcastable to ``(T, L)``, entry ``t`` = ``log P_B(s_t | s_{t+1})``).

All three losses work in log space and return **one loss per trajectory**, shape ``(T,)``, so that the
caller can apply per-trajectory weights (uncertainty weights, Eq. 8) and reduce as it likes.

Shapes (``T`` trajectories, ``L`` decoding steps):

* ``log_pf`` ``(T, L)``: ``log P_F(s_{t+1} | s_t)`` of the token actually taken at step ``t``.
* ``log_r`` ``(T,)``: ``log R(x)``; must be finite (floor the reward with ``eps`` first, see ``reward.py``).
* ``log_z`` ``(T,)`` (or scalar): learnable log partition function ``log Z`` (flow of ``s_0``).
* ``log_f`` ``(T, L)``: learnable log state flows ``log F(s_0) .. log F(s_{L-1})``; the terminal state's flow
  is the reward, ``log F(s_L) := log R(x)``.
* ``mask`` ``(T, L)`` bool, optional: ``True`` for the steps a trajectory really takes. It must be a prefix
  (``True ... True False ... False``, at least one ``True``); a trajectory with ``l`` valid steps terminates
  at ``s_l`` (its reward is attached there). IDs in GFlowGR have a fixed length, so ``None`` = all steps.
  Masked entries of ``log_pf``/``log_f``/``log_pb`` are ignored (they may be ``-inf``/``nan``).

Objectives (with ``log P_B = 0`` in GFlowGR):

* Trajectory balance (Malkin et al. 2022)::

      L_TB(tau) = ( log Z + sum_t log P_F(s_{t+1}|s_t) - log R(x) - sum_t log P_B(s_t|s_{t+1}) )^2

* Detailed balance (Bengio et al. 2021), **summed** over the transitions of the trajectory::

      L_DB(tau) = sum_{t=0}^{L-1} ( log F(s_t) + log P_F(s_{t+1}|s_t) - log F(s_{t+1}) - log P_B(s_t|s_{t+1}) )^2

* Sub-trajectory balance SubTB(lambda) (Madan et al. 2023)::

      L_SubTB(tau) = sum_{0<=i<j<=L} lambda^(j-i) * delta_{i,j}^2 / sum_{0<=i<j<=L} lambda^(j-i)
      delta_{i,j} = log F(s_i) + sum_{t=i}^{j-1} (log P_F(s_{t+1}|s_t) - log P_B(s_t|s_{t+1})) - log F(s_j)

  with ``log F(s_L) = log R(x)``; the normaliser makes it a weighted *mean* over sub-trajectories.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["trajectory_balance", "detailed_balance", "subtrajectory_balance"]


def _check_2d(name: str, x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape != ref.shape:
        raise ValueError(f"{name} must have shape (T, L) = {tuple(ref.shape)}, got {tuple(x.shape)}")


def _prepare(log_pf: torch.Tensor, log_r: torch.Tensor, log_pb, mask):
    """Validate shapes; return ``(step, mask, lengths)`` with ``step = log_pf - log_pb`` zeroed where masked."""
    if log_pf.dim() != 2:
        raise ValueError(f"log_pf must have shape (T, L), got {tuple(log_pf.shape)}")
    T, L = log_pf.shape
    if L == 0:
        raise ValueError("log_pf must have at least one step (L >= 1)")
    if log_r.shape != (T,):
        raise ValueError(f"log_r must have shape (T,) = ({T},), got {tuple(log_r.shape)}")
    if mask is None:
        mask = torch.ones(T, L, dtype=torch.bool, device=log_pf.device)  # (T, L)
    else:
        _check_2d("mask", mask, log_pf)
        mask = mask.to(torch.bool)
        lengths_ = mask.sum(1)
        prefix = torch.arange(L, device=mask.device).unsqueeze(0) < lengths_.unsqueeze(1)  # (T, L)
        if not torch.equal(prefix, mask) or bool((lengths_ == 0).any()):
            raise ValueError("mask must be a non-empty prefix per row (True ... True False ... False)")
    step = log_pf
    if log_pb is not None:
        log_pb = torch.as_tensor(log_pb, dtype=log_pf.dtype, device=log_pf.device)
        step = log_pf - log_pb.expand(T, L)  # (T, L)
    step = torch.where(mask, step, torch.zeros((), dtype=step.dtype, device=step.device))  # (T, L)
    lengths = mask.sum(1)  # (T,)
    return step, mask, lengths


def _flows_with_terminal(log_f: torch.Tensor, log_r: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(T, L+1)`` log flows of ``s_0..s_L`` with ``log R`` placed at each trajectory's terminal ``s_l``.

    Entries after the terminal state are zero (never used)."""
    T, L = log_f.shape
    idx = torch.arange(L + 1, device=log_f.device).unsqueeze(0)  # (1, L+1)
    zero = torch.zeros((), dtype=log_f.dtype, device=log_f.device)
    padded = torch.cat([log_f, log_f.new_zeros(T, 1)], dim=1)  # (T, L+1)
    flows = torch.where(idx < lengths.unsqueeze(1), padded, zero)  # (T, L+1): learnable flows before terminal
    terminal = idx == lengths.unsqueeze(1)  # (T, L+1)
    return torch.where(terminal, log_r.to(log_f.dtype).unsqueeze(1), flows)  # (T, L+1)


def trajectory_balance(log_z: torch.Tensor, log_pf: torch.Tensor, log_r: torch.Tensor,
                       log_pb: Optional[torch.Tensor] = None,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Trajectory-balance loss per trajectory (GFlowGR §2, Eqs. 3-6; Malkin et al. 2022).

    ``L_TB = (log Z + sum_t log P_F - log R - sum_t log P_B)^2``; with GFlowGR's tree-shaped state space
    ``log P_B = 0`` (default ``log_pb=None``).

    Args:
        log_z: ``(T,)`` or scalar, learnable log partition function (may be conditioned on the user).
        log_pf: ``(T, L)`` forward log-probabilities of the chosen tokens.
        log_r: ``(T,)`` log rewards (finite).
        log_pb: optional, broadcastable to ``(T, L)``, backward log-probabilities.
        mask: optional ``(T, L)`` bool prefix mask of valid steps.

    Returns:
        ``(T,)`` squared residuals.
    """
    step, _, _ = _prepare(log_pf, log_r, log_pb, mask)  # (T, L)
    log_z = torch.as_tensor(log_z, dtype=log_pf.dtype, device=log_pf.device)
    if log_z.dim() > 1 or (log_z.dim() == 1 and log_z.shape[0] not in (1, log_pf.shape[0])):
        raise ValueError(f"log_z must be a scalar or have shape (T,) = ({log_pf.shape[0]},), got {tuple(log_z.shape)}")
    residual = log_z + step.sum(1) - log_r.to(log_pf.dtype)  # (T,)
    return residual.pow(2)


def detailed_balance(log_f: torch.Tensor, log_pf: torch.Tensor, log_r: torch.Tensor,
                     log_pb: Optional[torch.Tensor] = None,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Detailed-balance loss per trajectory, **summed** over its transitions (GFlowGR §2, Eqs. 3-6).

    ``L_DB = sum_{t<l} (log F(s_t) + log P_F(s_{t+1}|s_t) - log F(s_{t+1}) - log P_B(s_t|s_{t+1}))^2`` with
    ``log F(s_l) := log R(x)`` at the terminal state (``l = L`` unless ``mask`` says otherwise). Divide by the
    number of steps yourself if you want the per-transition mean.

    Args:
        log_f: ``(T, L)`` learnable log flows of the non-terminal states ``s_0 .. s_{L-1}``
            (``log_f[:, 0]`` plays the role of ``log Z``).
        log_pf: ``(T, L)`` forward log-probabilities of the chosen tokens.
        log_r: ``(T,)`` log rewards (finite).
        log_pb: optional, broadcastable to ``(T, L)``.
        mask: optional ``(T, L)`` bool prefix mask of valid steps.

    Returns:
        ``(T,)`` per-trajectory sums of squared residuals.
    """
    step, mask, lengths = _prepare(log_pf, log_r, log_pb, mask)  # (T, L)
    _check_2d("log_f", log_f, log_pf)
    flows = _flows_with_terminal(log_f.to(step.dtype), log_r, lengths)  # (T, L+1)
    residual = flows[:, :-1] + step - flows[:, 1:]  # (T, L)
    residual = torch.where(mask, residual, torch.zeros((), dtype=residual.dtype, device=residual.device))
    return residual.pow(2).sum(1)


def subtrajectory_balance(log_f: torch.Tensor, log_pf: torch.Tensor, log_r: torch.Tensor,
                          lamda: float = 0.9, log_pb: Optional[torch.Tensor] = None,
                          mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SubTB(lambda) loss per trajectory (GFlowGR §2, Eqs. 3-6; Madan et al. 2023).

    Over every sub-trajectory ``s_i -> .. -> s_j`` (``0 <= i < j <= l``)::

        delta_ij = log F(s_i) + sum_{t=i}^{j-1} (log P_F - log P_B)_t - log F(s_j),  log F(s_l) := log R(x)
        L_SubTB  = sum_{i<j} lamda^(j-i) delta_ij^2 / sum_{i<j} lamda^(j-i)

    ``lamda -> 0`` approaches (mean) DB, large ``lamda`` emphasises the full trajectory (TB with
    ``log Z = log F(s_0)``).

    Args:
        log_f: ``(T, L)`` learnable log flows of ``s_0 .. s_{L-1}``.
        log_pf: ``(T, L)`` forward log-probabilities of the chosen tokens.
        log_r: ``(T,)`` log rewards (finite).
        lamda: ``> 0`` geometric weight of a sub-trajectory of length ``j - i``.
        log_pb: optional, broadcastable to ``(T, L)``.
        mask: optional ``(T, L)`` bool prefix mask of valid steps.

    Returns:
        ``(T,)`` weighted mean of squared sub-trajectory residuals.
    """
    if not float(lamda) > 0:
        raise ValueError(f"lamda (SubTB lambda) must be > 0, got {lamda}")
    step, mask, lengths = _prepare(log_pf, log_r, log_pb, mask)  # (T, L)
    _check_2d("log_f", log_f, log_pf)
    T, L = step.shape
    flows = _flows_with_terminal(log_f.to(step.dtype), log_r, lengths)  # (T, L+1)
    cum = torch.cat([step.new_zeros(T, 1), step.cumsum(1)], dim=1)  # (T, L+1): sum of steps before s_k
    # delta[b, i, j] = F_i + cum_j - cum_i - F_j
    a = flows - cum  # (T, L+1)
    delta = a.unsqueeze(2) - a.unsqueeze(1)  # (T, L+1, L+1)
    idx = torch.arange(L + 1, device=step.device)
    span = (idx.unsqueeze(0) - idx.unsqueeze(1))  # (L+1, L+1): j - i
    valid = (span > 0).unsqueeze(0) & (idx.view(1, 1, -1) <= lengths.view(-1, 1, 1))  # (T, L+1, L+1)
    weight = torch.where(valid, float(lamda) ** span.clamp(min=0).to(step.dtype),
                         torch.zeros((), dtype=step.dtype, device=step.device))  # (T, L+1, L+1)
    sq = torch.where(valid, delta.pow(2), torch.zeros((), dtype=step.dtype, device=step.device))
    return (weight * sq).sum((1, 2)) / weight.sum((1, 2))
