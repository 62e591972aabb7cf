"""Running statistics of observation and reward normalization (gymnasium's ``NormalizeObservation``
and ``NormalizeReward`` vector wrappers): read, saved in checkpoints, restored, frozen for
evaluation (37 details, continuous details 6-9).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import vector as vw

from ppo_lab.io.checkpoint import torch_from_numpy


def _find_wrapper(envs: gym.vector.VectorEnv, kind: type) -> Any:
    env: Any = envs
    while isinstance(env, gym.vector.VectorWrapper):
        if isinstance(env, kind):
            return env
        env = env.env
    return None


def normalization_state(envs: gym.vector.VectorEnv) -> dict[str, dict[str, Any]]:
    """Running statistics of observation and reward normalization, as plain arrays/floats
    (``{"obs": {"mean", "var", "count"}, "reward": {...}}``; absent keys: not normalized)."""
    state: dict[str, dict[str, Any]] = {}
    for key, kind, attr in (
        ("obs", vw.NormalizeObservation, "obs_rms"),
        ("reward", vw.NormalizeReward, "return_rms"),
    ):
        wrapper = _find_wrapper(envs, kind)
        if wrapper is not None:
            rms = getattr(wrapper, attr)
            state[key] = {
                "mean": np.asarray(rms.mean, dtype=np.float64).copy(),
                "var": np.asarray(rms.var, dtype=np.float64).copy(),
                "count": float(rms.count),
            }
    return state


def normalization_to_tensors(state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`normalization_state` with arrays as tensors, for a ``weights_only`` checkpoint."""
    return {key: {k: torch_from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in stats.items()}
            for key, stats in state.items()}


def normalization_from_tensors(state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Inverse of :func:`normalization_to_tensors`."""
    return {key: {k: float(v) if k == "count" else v.numpy() for k, v in stats.items()}
            for key, stats in state.items()}


def load_normalization_state(
    envs: gym.vector.VectorEnv, state: dict[str, dict[str, Any]], freeze: bool = False
) -> None:
    """Copy saved statistics into the env's normalization wrappers; ``freeze`` stops updating them
    (evaluation).

    Raises:
        ValueError: the saved statistics and the env's wrappers do not match.
    """
    for key, kind, attr in (
        ("obs", vw.NormalizeObservation, "obs_rms"),
        ("reward", vw.NormalizeReward, "return_rms"),
    ):
        wrapper = _find_wrapper(envs, kind)
        if (wrapper is None) != (key not in state):
            raise ValueError(
                f"normalization state mismatch for {key!r}: saved={key in state}, "
                f"env normalizes={wrapper is not None}"
            )
        if wrapper is None:
            continue
        rms = getattr(wrapper, attr)
        rms.mean = np.array(state[key]["mean"], dtype=np.float64)
        rms.var = np.array(state[key]["var"], dtype=np.float64)
        rms.count = float(state[key]["count"])
        if freeze:
            wrapper.update_running_mean = False


class NormalizationStats:
    """The normalization statistics of a vector env as a checkpoint component.

    ``state_dict()`` gives ``{"obs": {"mean", "var", "count"}, "reward": {...}}`` with the arrays
    as float64 tensors (it loads with ``weights_only=True``); absent keys: not normalized.
    """

    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        self.envs = envs

    def numpy(self) -> dict[str, dict[str, Any]]:
        """The current statistics as numpy arrays (a copy)."""
        return normalization_state(self.envs)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return normalization_to_tensors(normalization_state(self.envs))

    def load_state_dict(self, state: dict[str, dict[str, Any]], freeze: bool = False) -> None:
        """Restore :meth:`state_dict`; ``freeze`` stops updating the statistics (evaluation).

        Raises:
            ValueError: the saved statistics and the env's wrappers do not match.
        """
        load_normalization_state(self.envs, normalization_from_tensors(state), freeze=freeze)
