"""The PPO-clip loss and its gradient in closed form, in numpy: the population's fast path.

:func:`ppo_clip_losses_and_grads` computes what :func:`~ppo_lab.algo.losses.ppo_losses` followed by
:func:`~ppo_lab.algo.losses.total_loss` computes for ``M`` members side by side (same formulas,
same order of operations, float32), and, instead of leaving the gradient to autograd, returns
the gradient of each member's total loss with respect to its new log-probabilities, values and
entropies. A network that can backpropagate those three by hand (the population's stacked MLPs,
``policies/stacked.py``) then needs no autograd graph at all. Where autograd splits a gradient
between the two arguments of ``torch.max`` that tie, so does this (half to each), so the
gradients agree with autograd's to float32 rounding (``tests/test_loss_grads.py``).

Sources: as ``algo/losses.py`` (PPO paper eq. 7 and 9; 37 details 7, 9, 10, 12). The KL-penalty
objective (eq. 8) is not here: populations with ``agent.loss=kl_penalty`` take the autograd path.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

#: A coefficient: one float for every member, or ``(M,)`` per member.
Coef = Union[float, np.ndarray]


def _rows(coef: Coef) -> Union[float, np.ndarray]:
    """``(M,)`` per-member values as ``(M, 1)`` (to broadcast against ``(M, B)``); floats as they are."""
    return np.asarray(coef, dtype=np.float32)[:, None] if isinstance(coef, np.ndarray) else coef


def _max_grads(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The share of ``max(a, b)``'s gradient that reaches ``a`` and ``b``: 1 to the larger, 0 to the
    smaller, one half to each where they tie (``torch.maximum``'s backward)."""
    half = np.float32(0.5)
    to_a = np.where(a > b, np.float32(1.0), np.where(a == b, half, np.float32(0.0)))
    return to_a, np.float32(1.0) - to_a


def normalize_advantages(advantages: np.ndarray, weights: Optional[np.ndarray], eps: float = 1e-8) -> np.ndarray:
    """``algo.losses.normalize_advantages`` in numpy: ``(M, B)`` advantages to mean 0 and (unbiased)
    std 1 over each row's samples (``weights`` ``(M, B)``, 1 = sample, 0 = padding; None: all)."""
    if weights is None:
        centered = advantages - advantages.mean(-1, keepdims=True)
        if advantages.shape[-1] < 2:
            return centered
        return centered / (advantages.std(-1, ddof=1, keepdims=True) + np.float32(eps))
    count = weights.sum(-1, keepdims=True)
    centered = advantages - (advantages * weights).sum(-1, keepdims=True) / count
    std = np.sqrt((np.square(centered) * weights).sum(-1, keepdims=True) / np.maximum(count - 1, 1))
    return np.where(count > 1, centered / (std + np.float32(eps)), centered)


def ppo_clip_losses_and_grads(
    new_logprob: np.ndarray,
    old_logprob: np.ndarray,
    advantages: np.ndarray,
    new_value: np.ndarray,
    old_value: np.ndarray,
    returns: np.ndarray,
    entropy: np.ndarray,
    clip_coef: Coef,
    ent_coef: Coef,
    vf_coef: Coef,
    clip_vloss: bool = True,
    norm_adv: bool = True,
    weights: Optional[np.ndarray] = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """PPO-clip terms and the gradient of each member's total loss, for ``M`` members at once.

    Args:
        new_logprob, old_logprob, advantages, new_value, old_value, returns, entropy: ``(M, B)``
            float32, as :func:`~ppo_lab.algo.losses.ppo_losses` takes them (row m: member m's
            minibatch).
        clip_coef, ent_coef, vf_coef: floats, or ``(M,)`` float32 arrays (one per member).
        clip_vloss, norm_adv: as ``ppo_losses``.
        weights: ``(M, B)`` float32, 1 for a sample and 0 for padding; None: all samples.

    Returns:
        ``(terms, d_logprob, d_value, d_entropy)``: ``terms`` maps ``policy_loss``,
        ``value_loss``, ``entropy``, ``approx_kl``, ``old_approx_kl``, ``clipfrac`` and ``loss``
        (``policy_loss - ent_coef * entropy + vf_coef * value_loss``, PPO eq. 9) to ``(M,)``
        float32 arrays; the three gradients are ``(M, B)`` float32, d loss_m / d input[m, b]
        (0 on padding).
    """
    m, b = new_logprob.shape
    if weights is None:
        scale = np.full((m, 1), 1.0 / b, dtype=np.float32)  # d mean / d x

        def mean(x: np.ndarray) -> np.ndarray:
            return x.mean(-1)
    else:
        count = weights.sum(-1)
        scale = weights / count[:, None]

        def mean(x: np.ndarray) -> np.ndarray:
            return (x * weights).sum(-1) / count

    clip = _rows(clip_coef)
    if norm_adv:
        advantages = normalize_advantages(advantages, weights)
    logratio = new_logprob - old_logprob
    ratio = np.exp(logratio)
    terms = {
        "old_approx_kl": mean(-logratio),
        "approx_kl": mean((ratio - 1) - logratio),
        "clipfrac": mean((np.abs(ratio - np.float32(1.0)) > clip).astype(np.float32)),
    }

    # Clipped surrogate (eq. 7): max(-A r, -A clip(r, 1 - eps, 1 + eps)). A float's bounds are
    # computed in double and rounded once, as torch.clamp takes ``1 - clip`` (float32(1) - clip
    # can be an ulp off); per-member bounds are float32 arithmetic in both.
    if isinstance(clip, float):
        low, high = np.float32(1.0 - clip), np.float32(1.0 + clip)
    else:
        low, high = np.float32(1.0) - clip, np.float32(1.0) + clip
    pg1 = -advantages * ratio
    pg2 = -advantages * np.clip(ratio, low, high)
    terms["policy_loss"] = mean(np.maximum(pg1, pg2))
    to_1, to_2 = _max_grads(pg1, pg2)
    inside = ((ratio >= low) & (ratio <= high)).astype(np.float32)  # clamp passes its gradient inside, bounds included
    d_ratio = -advantages * (to_1 + to_2 * inside)
    d_logprob = scale * d_ratio * ratio  # d exp(x) = exp(x)

    # Value loss (detail 9): 0.5 * max((v - R)^2, (old + clip(v - old, -eps, eps) - R)^2), or unclipped.
    vf = _rows(vf_coef)
    error = new_value - returns
    if clip_vloss:
        delta = new_value - old_value
        error_clipped = old_value + np.clip(delta, -clip, clip) - returns
        loss_unclipped, loss_clipped = np.square(error), np.square(error_clipped)
        terms["value_loss"] = np.float32(0.5) * mean(np.maximum(loss_unclipped, loss_clipped))
        to_u, to_c = _max_grads(loss_unclipped, loss_clipped)
        inside_v = ((delta >= -clip) & (delta <= clip)).astype(np.float32)
        d_square = to_u * 2 * error + to_c * inside_v * 2 * error_clipped
    else:
        terms["value_loss"] = np.float32(0.5) * mean(np.square(error))
        d_square = 2 * error
    d_value = (vf * np.float32(0.5)) * scale * d_square

    ent = _rows(ent_coef)
    terms["entropy"] = mean(entropy)
    d_entropy = np.broadcast_to(-ent * scale, entropy.shape).astype(np.float32)

    terms["loss"] = terms["policy_loss"] - _flat(ent_coef) * terms["entropy"] + _flat(vf_coef) * terms["value_loss"]
    terms = {k: np.asarray(v, dtype=np.float32) for k, v in terms.items()}
    return terms, d_logprob.astype(np.float32, copy=False), d_value.astype(np.float32, copy=False), d_entropy


def _flat(coef: Coef) -> Union[float, np.ndarray]:
    """A coefficient against ``(M,)`` terms: the float, or the ``(M,)`` float32 array."""
    return np.asarray(coef, dtype=np.float32) if isinstance(coef, np.ndarray) else coef
