"""Action distributions as stateless math, without building ``torch.distributions`` objects.

Each distribution speaks two array languages, one per phase of PPO:

* **acting** (rollouts and evaluation) is numpy: ``sample``, ``mode`` and ``log_prob`` take the
  numpy outputs of the rollout policy (``networks.InferencePolicy``) and a
  ``numpy.random.Generator``. On the tiny networks of classic control and MuJoCo, a numpy
  policy step costs less than half of an eager torch one (issue #8: "a numpy forward of the
  policy during rollout").
* **training** is torch: ``log_prob_entropy`` re-scores the stored actions under the parameters
  being optimized, with autograd.

Both compute the same quantities (pinned against ``torch.distributions`` in
``tests/test_distributions.py``), so the log-probabilities stored during the rollout and the
ones recomputed in the first minibatch agree to float32 rounding (ratio 1).

Invalid-action masking (``agent.action_masking``): the discrete distributions take an optional
``mask`` ``(B, n)`` bool (``(B, sum(nvec))`` for MultiCategorical), True = valid. Invalid logits
are replaced by :data:`MASKED_LOGIT` before anything else (sb3-contrib MaskableCategorical), so a
masked action's probability is exactly 0 in float32: it is never sampled, the log-probabilities
renormalize over the valid actions and the entropy is over them only (``0 * -1e8 = 0``, no NaN);
its logit gets no gradient. ``mask=None`` is the plain path, with no extra work.

Shapes: ``B`` is the batch, ``n`` the number of discrete actions (or bits), ``d`` the action
dimension. The acting methods also take a leading member dim, ``(M, B, ...)``, with ``M``
generators (a population's lockstep rollout, :data:`Rng`): each member draws what it would alone.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor

#: Bounds of the state-independent log std: exp(-20) ~ 2e-9, exp(2) ~ 7.4. Keeps log-probs finite.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

#: log(sqrt(2 pi)), the Gaussian log-density's constant.
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: The logit of a masked (invalid) action, as sb3-contrib's MaskableCategorical: exp(-1e8 - max)
#: is exactly 0 in float32, and it stays finite, so no inf - inf or 0 * inf NaN anywhere.
MASKED_LOGIT = -1e8


def apply_mask(logits: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``logits`` ``(B, n)`` with the entries where ``mask`` ``(B, n)`` is False set to
    :data:`MASKED_LOGIT` (numpy); ``logits`` itself when ``mask`` is None."""
    if mask is None:
        return logits
    return np.where(mask, logits, np.float32(MASKED_LOGIT))


def apply_mask_torch(logits: Tensor, mask: Tensor | None) -> Tensor:
    """:func:`apply_mask` in torch (differentiable: a masked logit gets no gradient)."""
    if mask is None:
        return logits
    return torch.where(mask.bool(), logits, torch.full_like(logits, MASKED_LOGIT))


#: What the acting methods draw from: one generator, or a population's ``M`` generators, one per
#: member, when every array has a leading ``(M, ...)`` member dim (``inference.StackedMLPPolicy``).
Rng = Union[np.random.Generator, Sequence[np.random.Generator]]


def draw(rng: Rng, method: str, shape: tuple[int, ...], **kwargs: Any) -> np.ndarray:
    """``rng.<method>(shape, **kwargs)``; for ``M`` generators, row ``m`` of the ``(M, *rest)``
    result is generator ``m``'s draw of ``rest``: what that member's solo run draws.

    Raises:
        ValueError: ``M`` generators for a shape whose leading dim is not ``M``.
    """
    if isinstance(rng, np.random.Generator):
        return getattr(rng, method)(shape, **kwargs)
    if len(rng) != shape[0]:
        raise ValueError(f"{len(rng)} generators for a draw of shape {shape}: one per row of the leading dim")
    # Each generator fills its row in place (``out=``: the same draws as ``size=``, no stack copy).
    out = np.empty(shape, dtype=kwargs.get("dtype", np.float64))
    for row, r in zip(out, rng):
        getattr(r, method)(out=row, **kwargs)
    return out


def pick(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[..., index]`` row by row: ``(..., n)`` values, ``(...)`` int indices -> ``(...)``."""
    if values.ndim == 2:  # the solo rollout's hot path: plain fancy indexing is the cheapest
        return values[np.arange(len(index)), index]
    # Leading dims flattened: one fancy index (``take_along_axis`` builds an index grid per call).
    flat = values.reshape(-1, values.shape[-1])
    return flat[np.arange(len(flat)), index.reshape(-1)].reshape(index.shape)


def action_rng(seed: int) -> np.random.Generator:
    """The generator a run's actions are drawn from, for a given seed.

    A child of ``SeedSequence(seed)``, so its stream is independent of the envs': gymnasium
    seeds env i with ``SeedSequence(seed + i)``, and ``default_rng(seed)`` would replay env 0's
    reset noise as action noise.
    """
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])


class Categorical:
    """Categorical distribution over ``n`` actions, parameterized by unnormalized logits ``(B, n)``."""

    def sample(
        self, logits: np.ndarray, rng: Rng, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one action per row; return it with its log-probability (the rollout's hot path).

        Exponential race (Gumbel-max in disguise): ``argmax_i p_i / E_i`` with
        ``E_i ~ Exp(1)`` picks ``i`` with probability ``p_i``; the probabilities need not be
        normalized for the argmax, so one ``exp`` serves the draw and the log-probability.

        A masked action has weight exactly 0 (module docstring), and the row's most likely valid
        action has weight 1, so the argmax never lands on a masked action.

        Args:
            logits: ``(B, n)`` float32.
            rng: the generator the draws come from.
            mask: ``(B, n)`` bool, True = valid; None: every action is valid.

        Returns:
            ``(B,)`` int64 actions and their ``(B,)`` float32 log pi(a|s).
        """
        logits = apply_mask(logits, mask)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        weights = np.exp(shifted)
        # float64 draws: a float32 Exp(1) draw is exactly 0 about once in 2**23, and a zero would
        # pick its action whatever its probability (w / 0 = inf); in float64, once in ~2**53.
        action = (weights / draw(rng, "standard_exponential", weights.shape)).argmax(axis=-1)
        log_norm = np.log(weights.sum(axis=-1))
        return action, pick(shifted, action) - log_norm

    def mode(self, logits: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``(B,)`` most likely (valid) action (deterministic evaluation)."""
        return apply_mask(logits, mask).argmax(axis=-1)

    def log_prob(self, logits: np.ndarray, actions: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``(B,)`` log pi(a|s) of ``actions`` ``(B,)`` (numpy), renormalized over the valid
        actions when ``mask`` ``(B, n)`` is given."""
        logits = apply_mask(logits, mask)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=-1))
        return pick(shifted, actions.astype(np.int64)) - log_norm

    def log_prob_entropy(
        self, logits: Tensor, actions: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Training: ``(B,)`` log-probabilities of ``actions`` ``(B,)`` and ``(B,)`` entropies
        under ``logits`` ``(B, n)`` (torch, differentiable), sharing one log-softmax; over the
        valid actions of ``mask`` ``(B, n)`` when given (a masked action adds 0 * -1e8 = 0)."""
        logp = torch.log_softmax(apply_mask_torch(logits, mask), dim=-1)
        entropy = -(logp.exp() * logp).sum(dim=-1)
        return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), entropy


class MultiCategorical:
    """Independent Categoricals, one per component of a ``MultiDiscrete(nvec)`` space (37 details,
    MultiDiscrete detail: logits split by ``nvec``; log-probs and entropies summed over components).

    Args:
        nvec: number of choices of each of the ``k`` components.
    """

    def __init__(self, nvec: list[int]) -> None:
        self.nvec = [int(n) for n in nvec]
        self._bounds = np.cumsum(self.nvec)[:-1]
        self._cat = Categorical()

    def _split(self, array: np.ndarray | None) -> list[np.ndarray | None]:
        """``(B, sum(nvec))`` logits or mask -> one ``(B, n_i)`` part per component (Nones for None)."""
        if array is None:
            return [None] * len(self.nvec)
        return np.split(array, self._bounds, axis=-1)

    def sample(
        self, logits: np.ndarray, rng: Rng, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(B, k)`` int64 actions and their ``(B,)`` summed log-probabilities, from logits
        ``(B, sum(nvec))`` (``mask`` ``(B, sum(nvec))``: each component masked by its own part)."""
        parts = [self._cat.sample(lg, rng, m) for lg, m in zip(self._split(logits), self._split(mask))]
        return np.stack([a for a, _ in parts], axis=-1), np.sum([lp for _, lp in parts], axis=0)

    def mode(self, logits: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``(B, k)`` most likely (valid) choice of each component."""
        return np.stack([self._cat.mode(lg, m) for lg, m in zip(self._split(logits), self._split(mask))], axis=-1)

    def log_prob(self, logits: np.ndarray, actions: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``(B,)`` summed log-probabilities of ``actions`` ``(B, k)`` (numpy)."""
        return np.sum([self._cat.log_prob(lg, actions[..., i], m)
                       for i, (lg, m) in enumerate(zip(self._split(logits), self._split(mask)))], axis=0)

    def log_prob_entropy(
        self, logits: Tensor, actions: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Training: ``(B,)`` summed log-probabilities and ``(B,)`` summed entropies (torch)."""
        masks = [None] * len(self.nvec) if mask is None else torch.split(mask, self.nvec, dim=-1)
        parts = [self._cat.log_prob_entropy(lg, actions[..., i], m)
                 for i, (lg, m) in enumerate(zip(torch.split(logits, self.nvec, dim=-1), masks))]
        return torch.stack([p[0] for p in parts]).sum(0), torch.stack([p[1] for p in parts]).sum(0)


class Bernoulli:
    """Independent Bernoulli bits, one per entry of a ``MultiBinary(n)`` space, parameterized by
    logits ``(B, n)`` (P(bit = 1) = sigmoid(logit)); log-probs and entropies summed over bits
    (as sb3's BernoulliDistribution). Pinned against ``torch.distributions.Bernoulli``."""

    def sample(self, logits: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
        """``(B, n)`` int64 bits (bit i is 1 when a uniform draw is below sigmoid(logit_i)) and
        their ``(B,)`` float32 summed log-probabilities."""
        prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        bits = (draw(rng, "random", logits.shape) < prob).astype(np.int64)
        return bits, self.log_prob(logits, bits)

    def mode(self, logits: np.ndarray) -> np.ndarray:
        """``(B, n)`` most likely bits: 1 where the logit is > 0."""
        return (logits > 0).astype(np.int64)

    def log_prob(self, logits: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(B,)`` summed log-probabilities of bits ``actions`` ``(B, n)``:
        ``a * l - softplus(l)`` per bit (numpy, float32)."""
        logits = logits.astype(np.float32)
        return (actions * logits - np.logaddexp(np.float32(0.0), logits)).sum(axis=-1).astype(np.float32)

    def log_prob_entropy(self, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Training: ``(B,)`` summed log-probabilities of bits ``actions`` ``(B, n)`` and ``(B,)``
        summed entropies ``softplus(l) - l * sigmoid(l)`` (torch, differentiable)."""
        softplus = torch.nn.functional.softplus(logits)
        logp = (actions.to(logits.dtype) * logits - softplus).sum(dim=-1)
        entropy = (softplus - logits * torch.sigmoid(logits)).sum(dim=-1)
        return logp, entropy


class DiagGaussian:
    """Diagonal Gaussian with mean ``(B, d)`` and state-independent log std ``(d,)``.

    Log-probabilities and entropies are summed over the ``d`` action dimensions (CleanRL
    ppo_continuous_action.py; 37 details, continuous detail 1-2). The sample is returned
    unclipped: clipping to the action bounds happens only when stepping the env.
    """

    def sample(
        self, mean: np.ndarray, log_std: np.ndarray, rng: Rng
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(B, d)`` float32 sample and its ``(B,)`` log-density; with ``a = mean + std * eps``
        the standardized residual is ``eps`` itself, so no division is needed."""
        eps = draw(rng, "standard_normal", mean.shape, dtype=np.float32)
        action = mean + np.exp(log_std) * eps
        return action, (-0.5 * eps * eps - log_std - LOG_SQRT_2PI).sum(axis=-1)

    def mode(self, mean: np.ndarray) -> np.ndarray:
        """``(B, d)`` the mean action (deterministic evaluation)."""
        return mean

    def log_prob(self, mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(B,)`` log-density of ``actions`` ``(B, d)``, summed over dimensions (numpy)."""
        z = (actions - mean) * np.exp(-log_std)
        return (-0.5 * z * z - log_std - LOG_SQRT_2PI).sum(axis=-1)

    def log_prob_entropy(
        self, mean: Tensor, log_std: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Training: ``(B,)`` log-densities of ``actions`` ``(B, d)`` and ``(B,)`` entropies
        ``sum(0.5 + log(sqrt(2 pi)) + log_std)`` (torch, differentiable)."""
        z = (actions - mean) * torch.exp(-log_std)
        logp = (-0.5 * z.square() - log_std - LOG_SQRT_2PI).sum(dim=-1)
        entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(dim=-1).expand(mean.shape[:-1])
        return logp, entropy
