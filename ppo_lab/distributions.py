"""Action distributions as stateless math on tensors, without building ``torch.distributions``
objects on the hot path.

Building a ``torch.distributions.Categorical`` per env step costs more than the tiny policy
network itself (it validates arguments and normalizes logits). These classes hold no tensors:
they are created once per run and take the distribution parameters per call. Their results
match ``torch.distributions.Categorical`` / ``Normal`` (pinned by ``tests/test_distributions.py``).

Shapes: ``B`` is the batch, ``n`` the number of discrete actions, ``d`` the action dimension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class Categorical:
    """Categorical distribution over ``n`` actions, parameterized by unnormalized logits ``(B, n)``."""

    def sample_and_log_prob(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Draw one action per row and return it with its log-probability, sharing one
        log-softmax (the rollout's hot path).

        Returns:
            ``(B,)`` int64 actions and their ``(B,)`` log pi(a|s).
        """
        logp = torch.log_softmax(logits, dim=-1)
        # Exponential race (Gumbel-max in disguise): argmax_i p_i / E_i with E_i ~ Exp(1) picks i
        # with probability p_i. It is torch.multinomial's own single-sample algorithm (same
        # draws for the same seed) at half its call overhead on small batches.
        action = (logp.exp() / torch.empty_like(logp).exponential_()).argmax(dim=-1, keepdim=True)
        return action.squeeze(-1), logp.gather(-1, action).squeeze(-1)

    def mode(self, logits: Tensor) -> Tensor:
        """``(B,)`` most likely action (used for deterministic evaluation)."""
        return logits.argmax(dim=-1)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        """``(B,)`` log pi(a|s) of ``actions`` ``(B,)``."""
        logp = torch.log_softmax(logits, dim=-1)
        return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def log_prob_entropy(self, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``(B,)`` log-probabilities of ``actions`` and ``(B,)`` entropies, sharing one log-softmax."""
        logp = torch.log_softmax(logits, dim=-1)
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
        self._cat = Categorical()

    def _split(self, logits: Tensor) -> tuple[Tensor, ...]:
        return torch.split(logits, self.nvec, dim=-1)

    def sample_and_log_prob(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, k)`` int64 actions and their ``(B,)`` summed log-probabilities."""
        parts = [self._cat.sample_and_log_prob(lg) for lg in self._split(logits)]
        return torch.stack([p[0] for p in parts], dim=-1), torch.stack([p[1] for p in parts]).sum(0)

    def mode(self, logits: Tensor) -> Tensor:
        """``(B, k)`` most likely choice of each component."""
        return torch.stack([lg.argmax(dim=-1) for lg in self._split(logits)], dim=-1)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        """``(B,)`` summed log-probabilities of ``actions`` ``(B, k)``."""
        return torch.stack([self._cat.log_prob(lg, actions[..., i])
                            for i, lg in enumerate(self._split(logits))]).sum(0)

    def log_prob_entropy(self, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``(B,)`` summed log-probabilities and ``(B,)`` summed entropies."""
        parts = [self._cat.log_prob_entropy(lg, actions[..., i])
                 for i, lg in enumerate(self._split(logits))]
        return torch.stack([p[0] for p in parts]).sum(0), torch.stack([p[1] for p in parts]).sum(0)


class DiagGaussian:
    """Diagonal Gaussian with mean ``(B, d)`` and state-independent log std ``(d,)``.

    Log-probabilities and entropies are summed over the ``d`` action dimensions (CleanRL
    ppo_continuous_action.py; 37 details, continuous detail 1-2). The sample is returned
    unclipped: clipping to the action bounds happens only when stepping the env.
    """

    def sample_and_log_prob(self, mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, d)`` sample and its ``(B,)`` log-density; with ``a = mean + std * eps`` the
        standardized residual is ``eps`` itself, so no division is needed."""
        eps = torch.randn_like(mean)
        action = mean + log_std.exp() * eps
        return action, (-0.5 * eps.square() - log_std - _LOG_SQRT_2PI).sum(dim=-1)

    def mode(self, mean: Tensor) -> Tensor:
        """``(B, d)`` the mean action (deterministic evaluation)."""
        return mean

    def log_prob(self, mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
        """``(B,)`` log-density of ``actions`` ``(B, d)``, summed over dimensions."""
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(dim=-1)

    def entropy(self, mean: Tensor, log_std: Tensor) -> Tensor:
        """``(B,)`` entropy, summed over dimensions: ``sum(0.5 + log(sqrt(2 pi)) + log_std)``."""
        return (0.5 + _LOG_SQRT_2PI + log_std).sum(dim=-1).expand(mean.shape[0])

    def log_prob_entropy(
        self, mean: Tensor, log_std: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(B,)`` log-densities of ``actions`` and ``(B,)`` entropies."""
        return self.log_prob(mean, log_std, actions), self.entropy(mean, log_std)
