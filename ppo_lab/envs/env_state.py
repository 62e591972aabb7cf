"""Snapshots of a vector env's whole state (mid-episode) for exact resume, where that state is
numpy data (gymnasium's classic-control envs).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from ppo_lab.io.checkpoint import torch_from_numpy


# --------------------------------------------------------------------------- env state for resume
def _env_chain(envs: gym.vector.VectorEnv) -> list[Any]:
    """Every object holding env state: the vector wrappers, the vector env and, for
    ``SyncVectorEnv``, each sub-env's wrapper chain down to the unwrapped env."""
    chain: list[Any] = []
    env: Any = envs
    while isinstance(env, gym.vector.VectorWrapper):
        chain.append(env)
        env = env.env
    chain.append(env)
    for sub in getattr(env, "envs", []):
        while isinstance(sub, gym.Wrapper):
            chain.append(sub)
            sub = sub.env
        chain.append(sub)
    return chain


def _to_plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        # Numeric arrays only: constant tables such as FrozenLake's byte map are not state.
        return torch_from_numpy(value) if value.dtype.kind in "biuf" else None
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, np.random.Generator):
        return {"__generator__": value.bit_generator.state}
    return None


def env_state(envs: gym.vector.VectorEnv) -> list[dict[str, Any]]:
    """Snapshot of every numeric attribute (arrays, scalars, numpy RNG states) along the env chain.

    Exact for envs whose whole state is numpy data, such as gymnasium's classic-control envs
    (CartPole, Acrobot, Pendulum...); it does not capture simulator state held elsewhere (Box2D
    worlds, MuJoCo data, the ALE emulator), so it is used only for families whose ``exact_state`` is true.
    Returns a list (one dict per object in the chain) of tensors and plain values, safe for
    ``torch.load(weights_only=True)``.
    """
    snapshot = []
    for obj in _env_chain(envs):
        attrs = {}
        for key, value in vars(obj).items():
            plain = _to_plain(value)
            if plain is not None:
                attrs[key] = plain
        snapshot.append(attrs)
    return snapshot


def snapshot_fits(envs: gym.vector.VectorEnv, snapshot: list[dict[str, Any]]) -> bool:
    """Whether ``snapshot`` was taken of an env chain shaped as ``envs``' (one dict per object);
    False for a snapshot of another wrapper stack, e.g. a checkpoint written before the stack
    changed."""
    return len(_env_chain(envs)) == len(snapshot)


def load_env_state(envs: gym.vector.VectorEnv, snapshot: list[dict[str, Any]]) -> None:
    """Restore a snapshot taken by :func:`env_state` from an env built with the same config.

    Raises:
        ValueError: the env chain does not match the snapshot.
    """
    chain = _env_chain(envs)
    if len(chain) != len(snapshot):
        raise ValueError(f"env state mismatch: {len(snapshot)} saved objects, env has {len(chain)}")
    for obj, attrs in zip(chain, snapshot):
        for key, value in attrs.items():
            current = getattr(obj, key, None)
            if isinstance(value, dict) and "__generator__" in value:
                current.bit_generator.state = value["__generator__"]
            elif isinstance(current, np.ndarray) and current.shape == tuple(value.shape) and current.flags.writeable:
                # In place: the array may be a view of shared state (a population's normalization).
                current[...] = value.numpy()
            elif isinstance(current, np.ndarray):
                setattr(obj, key, value.numpy().astype(current.dtype, copy=True))
            elif isinstance(current, np.generic):
                setattr(obj, key, type(current)(value))
            else:
                setattr(obj, key, value)


class EnvStateSnapshot:
    """The vector env's whole state as a checkpoint component (:func:`env_state` /
    :func:`load_env_state`); only for families whose ``exact_state`` is true."""

    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        self.envs = envs

    def state_dict(self) -> list[dict[str, Any]]:
        return env_state(self.envs)

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        load_env_state(self.envs, state)
