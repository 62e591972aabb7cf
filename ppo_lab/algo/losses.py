"""PPO loss terms as functions of tensors, returned by name. The trainer owns the optimizer.

Sources: Schulman et al. 2017 ("Proximal Policy Optimization Algorithms"), eq. 7 (clipped
surrogate), eq. 8 (KL penalty), eq. 9 (combined loss); Huang et al. 2022 (37 details): per-minibatch
advantage normalization (detail 7), value clipping (detail 9), entropy bonus (detail 10),
approx_kl with the (r - 1) - log r estimator (detail 12).
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """``(B,)`` advantages shifted to mean 0 and scaled to std 1 (unbiased std, as CleanRL).
    A minibatch of one sample is returned centered only."""
    if advantages.numel() < 2:
        return advantages - advantages.mean()
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def ppo_losses(
    new_logprob: Tensor,
    old_logprob: Tensor,
    advantages: Tensor,
    new_value: Tensor,
    old_value: Tensor,
    returns: Tensor,
    entropy: Tensor,
    clip_coef: float,
    clip_vloss: bool = True,
    norm_adv: bool = True,
    kl_beta: float | None = None,
) -> dict[str, Tensor]:
    """The PPO loss terms on one minibatch.

    Args:
        new_logprob: ``(B,)`` log pi_theta(a|s) under the parameters being optimized.
        old_logprob: ``(B,)`` log pi_theta_old(a|s) recorded during the rollout.
        advantages: ``(B,)`` GAE advantages (unnormalized; normalized here when ``norm_adv``).
        new_value: ``(B,)`` V_theta(s).
        old_value: ``(B,)`` V(s) recorded during the rollout.
        returns: ``(B,)`` value targets (advantages + old values, before normalization).
        entropy: ``(B,)`` policy entropy at s.
        clip_coef: surrogate clipping epsilon; also the value clipping range.
        clip_vloss: clip the value update around ``old_value`` (CleanRL / baselines).
        norm_adv: normalize advantages over this minibatch.
        kl_beta: None for PPO-clip; a float selects the KL-penalty objective (eq. 8)
            ``-(r * A) + beta * KL`` with KL estimated by ``approx_kl``.

    Returns:
        dict of scalar tensors (combine them with :func:`total_loss`): ``policy_loss``, ``value_loss`` (0.5 * squared error), ``entropy``,
        ``approx_kl`` ((r - 1) - log r), ``old_approx_kl`` (-log r), ``clipfrac`` (fraction of
        samples with |r - 1| > clip_coef). Only ``policy_loss``, ``value_loss`` and ``entropy``
        carry gradients.
    """
    if norm_adv:
        advantages = normalize_advantages(advantages)
    logratio = new_logprob - old_logprob
    ratio = logratio.exp()
    with torch.no_grad():
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()

    if kl_beta is None:
        pg_loss1 = -advantages * ratio
        pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        policy_loss = torch.max(pg_loss1, pg_loss2).mean()
    else:
        kl = ((ratio - 1) - logratio).mean()
        policy_loss = -(advantages * ratio).mean() + kl_beta * kl

    if clip_vloss:
        v_loss_unclipped = (new_value - returns) ** 2
        v_clipped = old_value + torch.clamp(new_value - old_value, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        value_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    else:
        value_loss = 0.5 * ((new_value - returns) ** 2).mean()

    return {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy.mean(),
        "approx_kl": approx_kl,
        "old_approx_kl": old_approx_kl,
        "clipfrac": clipfrac,
    }


def total_loss(terms: dict[str, Tensor], ent_coef: float, vf_coef: float) -> Tensor:
    """Eq. 9 of the PPO paper, as minimized: ``policy_loss - ent_coef * entropy + vf_coef * value_loss``."""
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
