"""Generalized Advantage Estimation (Schulman et al. 2016) as a pure function on arrays.

``terminated`` and ``truncated`` are kept apart (37 details, detail 5; SB3 "bootstrapping on
timeouts"): a *terminated* step has no future value, a *truncated* one (time limit) bootstraps
from the value of its true final observation. Both end the recursion, because the next stored
step belongs to another episode.
"""

from __future__ import annotations

import numpy as np


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE(lambda) advantages and lambda-returns.

    For each step t (per env)::

        delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
        A_t     = delta_t + gamma * lambda * (1 - (terminated_t or truncated_t)) * A_{t+1}

    Args:
        rewards: ``(T, N)`` reward of step t.
        values: ``(T, N)`` V(s_t) of the observation the action was taken in.
        next_values: ``(T, N)`` V(s_{t+1}) of the observation step t reached. Where the episode
            ended at t this must be the value of the *true final* observation, not of the
            observation after the reset (with gymnasium's next-step autoreset this is simply
            ``values[t + 1]``, and the value of the last observation at t = T - 1).
        terminated: ``(T, N)`` bool, the episode reached a terminal state at step t.
        truncated: ``(T, N)`` bool, the episode was cut (time limit) at step t.
        gamma: discount per env step.
        gae_lambda: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``(T, N)`` float32; ``returns = advantages + values`` (the
        value target, computed before any advantage normalization).

    Raises:
        ValueError: the arrays' shapes differ.
    """
    shapes = {a.shape for a in (rewards, values, next_values, terminated, truncated)}
    if len(shapes) != 1:
        raise ValueError(f"compute_gae needs arrays of one shape (T, N), got shapes {shapes}")
    not_terminal = 1.0 - terminated.astype(np.float32)
    not_done = 1.0 - np.logical_or(terminated, truncated).astype(np.float32)
    deltas = rewards + gamma * not_terminal * next_values - values
    decay = gamma * gae_lambda * not_done
    advantages = np.zeros(rewards.shape, dtype=np.float32)
    last = np.zeros(rewards.shape[1:], dtype=np.float32)
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + decay[t] * last
        advantages[t] = last
    return advantages, (advantages + values).astype(np.float32)
