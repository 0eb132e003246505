"""Comprehensive reward of GFlowGR (arXiv 2506.16114, §3.2): ``R = R_aug + R_cm + R_tok``.

For each training example there is one positive trajectory (the observed next item) and ``N`` augmented
trajectories (unobserved items from the adaptive sampler). With ``k`` indexing the ``1 + N`` trajectories:

* ``R_aug[b, k] = 1`` for the positive, ``0`` for an augmented trajectory (augmentation reward);
* ``R_cm[b, k] = cm_score[b, k]`` in ``[0, 1]``, the collaborative model's score of that item (given);
* ``R_tok[b, k] = (1/S) * sum_{l<S} [codes[b, k, l] == pos_codes[b, l]]``, the fraction of the ``S`` *semantic*
  code positions shared with the positive's semantic ID (token-level reward; ``1`` for the positive by definition).
  ``S = n_semantic`` leaves out the last column of TIGER's/LETTER's IDs, the disambiguation index that only tells
  colliding items apart (0 for most items): counting it gave almost every augmented item ``R_tok >= 1/L``.
  ``tok_match="prefix"`` counts only the shared prefix instead, ``(1/S) * max{l : codes[:l] == pos_codes[:l]}``
  (a residual code under a different parent code means little); ``"position"`` (default) is the paper's count.

The final reward is ``R = max(eps, (sum of the enabled terms) ** exponent)`` so that ``log R`` is finite even
when every enabled term is ``0``; ``log R`` is computed in log space as
``max(log eps, exponent * log(sum))``, so it is finite even where ``R`` itself would overflow. Rewards are training *targets*: everything returned is detached.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

__all__ = ["comprehensive_reward"]


def comprehensive_reward(is_positive: torch.Tensor, cm_score: torch.Tensor, codes: torch.Tensor,
                         pos_codes: torch.Tensor, use_aug: bool = True, use_cm: bool = True,
                         use_tok: bool = True, eps: float = 1e-6, exponent: float = 1.0,
                         n_semantic: Optional[int] = None, tok_match: str = "position",
                         ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Reward of every trajectory (GFlowGR §3.2).

    Args:
        is_positive: ``(B, 1+N)`` bool, ``True`` for the observed item's trajectory.
        cm_score: ``(B, 1+N)`` collaborative-model scores in ``[0, 1]`` (not checked, to avoid a device sync).
        codes: ``(B, 1+N, L)`` int semantic-ID codes of each trajectory's item.
        pos_codes: ``(B, L)`` int codes of the positive item.
        use_aug, use_cm, use_tok: which terms enter the sum (ablations); at least one must be enabled.
        eps: ``> 0`` floor of the reward.
        exponent: ``> 0`` power applied to the summed reward (reward temperature ``beta``).
        n_semantic: how many leading code columns are semantic levels (R_tok counts only those); ``None`` = all
            ``L``. GFlowGR's callers pass ``L - 1`` (the last column is the disambiguation token).
        tok_match: ``"position"`` (count equal positions) or ``"prefix"`` (length of the shared prefix).

    Returns:
        ``(reward, log_reward, parts)``: ``reward`` and ``log_reward`` are ``(B, 1+N)`` float;
        ``parts`` = ``{"aug": R_aug, "cm": R_cm, "tok": R_tok}``, each ``(B, 1+N)`` (all three are
        always computed, for logging, whether enabled or not).
    """
    if not (use_aug or use_cm or use_tok):
        raise ValueError("comprehensive_reward: at least one of the reward terms (aug, cm, tok) must be enabled")
    if not float(eps) > 0:
        raise ValueError(f"comprehensive_reward: eps must be > 0 (reward floor), got {eps}")
    if not float(exponent) > 0:
        raise ValueError(f"comprehensive_reward: exponent must be > 0, got {exponent}")
    if is_positive.dim() != 2:
        raise ValueError(f"is_positive must have shape (B, 1+N), got {tuple(is_positive.shape)}")
    B, K = is_positive.shape
    if cm_score.shape != (B, K):
        raise ValueError(f"cm_score must have shape (B, 1+N) = {(B, K)}, got {tuple(cm_score.shape)}")
    if codes.dim() != 3 or codes.shape[:2] != (B, K):
        raise ValueError(f"codes must have shape (B, 1+N, L) with (B, 1+N) = {(B, K)}, got {tuple(codes.shape)}")
    L = codes.shape[2]
    if pos_codes.shape != (B, L):
        raise ValueError(f"pos_codes must have shape (B, L) = {(B, L)}, got {tuple(pos_codes.shape)}")

    S = L if n_semantic is None else int(n_semantic)
    if not 0 <= S <= L:
        raise ValueError(f"n_semantic must be in [0, L={L}], got {n_semantic}")
    if tok_match not in ("position", "prefix"):
        raise ValueError(f"tok_match='{tok_match}': use position or prefix (gflowgr_tok_match)")

    is_positive = is_positive.detach().to(torch.bool)  # (B, K)
    dtype = cm_score.dtype if cm_score.is_floating_point() else torch.get_default_dtype()
    one = torch.ones((), dtype=dtype, device=cm_score.device)

    r_aug = is_positive.to(dtype)  # (B, K)
    r_cm = cm_score.detach().to(dtype)  # (B, K)
    same = codes.detach()[..., :S] == pos_codes.detach()[:, :S].unsqueeze(1)  # (B, K, S): semantic levels only
    if tok_match == "prefix":
        same = same.to(torch.long).cumprod(2).bool()  # (B, K, S): True up to the first differing level
    r_tok = same.to(dtype).mean(2) if S > 0 else torch.zeros(B, K, dtype=dtype, device=cm_score.device)
    r_tok = torch.where(is_positive, one, r_tok)  # (B, K): the positive matches itself

    total = torch.zeros(B, K, dtype=dtype, device=cm_score.device)  # (B, K)
    if use_aug:
        total = total + r_aug
    if use_cm:
        total = total + r_cm
    if use_tok:
        total = total + r_tok
    # log space: log R = max(log eps, exponent * log(total)) stays finite even if total ** exponent overflows
    log_reward = (float(exponent) * total.clamp(min=0).log()).clamp(min=math.log(float(eps)))  # (B, K)
    reward = log_reward.exp()  # (B, K), >= eps
    return reward, log_reward, {"aug": r_aug, "cm": r_cm, "tok": r_tok}
