"""PPO loss terms as functions of tensors, returned by name. The trainer owns the optimizer.

Sources: Schulman et al. 2017 ("Proximal Policy Optimization Algorithms"), eq. 7 (clipped
surrogate), eq. 8 (KL penalty), eq. 9 (combined loss); Huang et al. 2022 (37 details): per-minibatch
advantage normalization (detail 7), value clipping (detail 9), entropy bonus (detail 10),
approx_kl with the (r - 1) - log r estimator (detail 12).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor


Coef = Union[float, Tensor]


def _mean(x: Tensor, weights: Optional[Tensor], count: Optional[Tensor]) -> Tensor:
    """Mean over the last dim; with ``weights`` (1 = a sample, 0 = padding), over the samples."""
    return x.mean(-1) if weights is None else (x * weights).sum(-1) / count


def _rows(coef: Coef) -> Coef:
    """A per-row coefficient ``(M,)`` as ``(M, 1)``, to broadcast against ``(M, B)`` samples."""
    return coef.unsqueeze(-1) if isinstance(coef, Tensor) else coef


def normalize_advantages(advantages: Tensor, eps: float = 1e-8, weights: Optional[Tensor] = None) -> Tensor:
    """Advantages ``(..., B)`` shifted to mean 0 and scaled to std 1 over the last dim (unbiased
    std, as CleanRL). A row of one sample is returned centered only. With ``weights`` ``(..., B)``
    (1 = a sample, 0 = padding), the mean and std are those of the samples alone."""
    if weights is None:
        if advantages.shape[-1] < 2:
            return advantages - advantages.mean(-1, keepdim=True)
        return (advantages - advantages.mean(-1, keepdim=True)) / (advantages.std(-1, keepdim=True) + eps)
    count = weights.sum(-1, keepdim=True)
    centered = advantages - (advantages * weights).sum(-1, keepdim=True) / count
    std = ((centered.square() * weights).sum(-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    return torch.where(count > 1, centered / (std + eps), centered)


def ppo_losses(
    new_logprob: Tensor,
    old_logprob: Tensor,
    advantages: Tensor,
    new_value: Tensor,
    old_value: Tensor,
    returns: Tensor,
    entropy: Tensor,
    clip_coef: Coef,
    clip_vloss: bool = True,
    norm_adv: bool = True,
    kl_beta: Optional[Coef] = None,
    weights: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """The PPO loss terms on one minibatch, or on one minibatch per population member.

    Every input is ``(B,)`` for one run, or ``(M, B)`` for ``M`` members side by side (row m is
    member m's minibatch; every term is then ``(M,)``, each row reduced over its own samples).

    Args:
        new_logprob: ``(B,)`` log pi_theta(a|s) under the parameters being optimized.
        old_logprob: ``(B,)`` log pi_theta_old(a|s) recorded during the rollout.
        advantages: ``(B,)`` GAE advantages (unnormalized; normalized here when ``norm_adv``).
        new_value: ``(B,)`` V_theta(s).
        old_value: ``(B,)`` V(s) recorded during the rollout.
        returns: ``(B,)`` value targets (advantages + old values, before normalization).
        entropy: ``(B,)`` policy entropy at s.
        clip_coef: surrogate clipping epsilon; also the value clipping range. A float, or a
            ``(M,)`` tensor: one per member.
        clip_vloss: clip the value update around ``old_value`` (CleanRL / baselines).
        norm_adv: normalize advantages over this minibatch.
        kl_beta: None for PPO-clip; a float (or ``(M,)`` tensor) selects the KL-penalty
            objective (eq. 8) ``-(r * A) + beta * KL`` with KL estimated by ``approx_kl``.
        weights: ``(M, B)`` float, 1 for a sample and 0 for padding (members whose minibatches
            are shorter than the longest are padded to it); None: every entry is a sample.
            Padding changes no term: each is a mean over its row's samples.

    Returns:
        dict of scalar (or ``(M,)``) tensors (combine them with :func:`total_loss`): ``policy_loss``, ``value_loss`` (0.5 * squared error), ``entropy``,
        ``approx_kl`` ((r - 1) - log r), ``old_approx_kl`` (-log r), ``clipfrac`` (fraction of
        samples with |r - 1| > clip_coef). Only ``policy_loss``, ``value_loss`` and ``entropy``
        carry gradients.
    """
    count = None if weights is None else weights.sum(-1)
    clip = _rows(clip_coef)
    if norm_adv:
        advantages = normalize_advantages(advantages, weights=weights)
    logratio = new_logprob - old_logprob
    ratio = logratio.exp()
    with torch.no_grad():
        old_approx_kl = _mean(-logratio, weights, count)
        approx_kl = _mean((ratio - 1) - logratio, weights, count)
        clipfrac = _mean(((ratio - 1.0).abs() > clip).float(), weights, count)

    if kl_beta is None:
        pg_loss1 = -advantages * ratio
        pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
        policy_loss = _mean(torch.max(pg_loss1, pg_loss2), weights, count)
    else:
        kl = _mean((ratio - 1) - logratio, weights, count)
        policy_loss = -_mean(advantages * ratio, weights, count) + kl_beta * kl

    if clip_vloss:
        v_loss_unclipped = (new_value - returns) ** 2
        v_clipped = old_value + torch.clamp(new_value - old_value, -clip, clip)
        v_loss_clipped = (v_clipped - returns) ** 2
        value_loss = 0.5 * _mean(torch.max(v_loss_unclipped, v_loss_clipped), weights, count)
    else:
        value_loss = 0.5 * _mean((new_value - returns) ** 2, weights, count)

    return {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": _mean(entropy, weights, count),
        "approx_kl": approx_kl,
        "old_approx_kl": old_approx_kl,
        "clipfrac": clipfrac,
    }


def total_loss(terms: dict[str, Tensor], ent_coef: Coef, vf_coef: Coef) -> Tensor:
    """Eq. 9 of the PPO paper, as minimized: ``policy_loss - ent_coef * entropy + vf_coef * value_loss``
    (scalar, or ``(M,)`` per member with ``(M,)`` coefficients)."""
    return terms["policy_loss"] - ent_coef * terms["entropy"] + vf_coef * terms["value_loss"]


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """``1 - Var[target - predicted] / Var[target]``; NaN when the target has zero variance."""
    var_y = target.var()
    if var_y == 0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var_y)


def update_kl_beta(beta: float, kl: float, kl_target: float) -> float:
    """Adaptive KL coefficient of the PPO paper, section 4: halve beta when ``kl < kl_target / 1.5``,
    double it when ``kl > kl_target * 1.5``, else keep it."""
    if kl < kl_target / 1.5:
        return beta / 2.0
    if kl > kl_target * 1.5:
        return beta * 2.0
    return beta
