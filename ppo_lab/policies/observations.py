"""Observation trees: one array (a ``Box``, ``Discrete``... space) or a dict of arrays (a ``Dict``
space, and a ``Tuple`` one, which the env factory turns into a ``Dict`` keyed ``"0"``, ``"1"``...).

The rollout buffer, the minibatches and the acting policies hold observations as such a tree:
``{key: (T, N, *entry_shape)}`` for a Dict space, ``(T, N, *obs_shape)`` otherwise. These helpers
are the one place that knows both forms, so a new consumer (sequence minibatches, say) handles
Dict observations by calling them. On a plain array each is the one array operation it stands
for (one ``isinstance`` check more): the Box path keeps its speed.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from ppo_lab.policies.encoders import buffer_dtype

#: An array (numpy or torch) or a dict of them, one per Dict entry.
ObsTree = Union[np.ndarray, Tensor, dict[str, Any]]


def map_obs(fn: Callable[[Any], Any], obs: ObsTree) -> ObsTree:
    """``fn`` applied to the array, or to each entry of a dict (same keys)."""
    if isinstance(obs, dict):
        return {key: fn(value) for key, value in obs.items()}
    return fn(obs)


def allocate_obs(space: gym.Space, leading: tuple[int, ...]) -> ObsTree:
    """Zeros for observations of ``space`` with ``leading`` dims, e.g. ``(T, N)``: an array
    ``(*leading, *obs_shape)`` or, for a ``Dict``, ``{key: (*leading, *entry_shape)}``; each with
    ``encoders.buffer_dtype`` of its (sub)space (uint8 pixels, int64 indices, float32 otherwise)."""
    if isinstance(space, gym.spaces.Dict):
        return {key: allocate_obs(sub, leading) for key, sub in space.spaces.items()}
    return np.zeros((*leading, *space.shape), dtype=buffer_dtype(space))


def write_obs(store: ObsTree, index: Any, obs: ObsTree) -> None:
    """``store[index] = obs``, entry by entry for a dict (numpy casts to the store's dtypes)."""
    if isinstance(store, dict):
        for key, array in store.items():
            array[index] = obs[key]
    else:
        store[index] = obs


def index_obs(obs: ObsTree, index: Any) -> ObsTree:
    """``obs[index]`` (an int, a slice, an index array or tensor), entry by entry for a dict."""
    if isinstance(obs, dict):
        return {key: value[index] for key, value in obs.items()}
    return obs[index]


def flatten_obs(obs: ObsTree, dims: int = 2) -> ObsTree:
    """The first ``dims`` dims merged: ``(T, N, *shape)`` -> ``(T * N, *shape)`` (a view where
    numpy / torch can give one)."""
    return map_obs(lambda a: a.reshape(-1, *a.shape[dims:]), obs)


def split_obs(obs: ObsTree, sections: int) -> list[ObsTree]:
    """Torch tensors split along dim 0 into ``sections`` parts as even as possible
    (``Tensor.tensor_split``); a dict gives one dict per part."""
    if isinstance(obs, dict):
        parts = {key: value.tensor_split(sections) for key, value in obs.items()}
        return [{key: parts[key][i] for key in parts} for i in range(sections)]
    return list(obs.tensor_split(sections))


def obs_batch_size(obs: ObsTree) -> int:
    """Length of the leading dim (of the first entry of a dict)."""
    if isinstance(obs, dict):
        return len(next(iter(obs.values())))
    return len(obs)


def _array_to_tensor(obs: Any, device: torch.device | str) -> Tensor:
    obs = np.asarray(obs)
    if obs.dtype == np.uint8:
        dtype = torch.uint8
    elif np.issubdtype(obs.dtype, np.integer):
        dtype = torch.int64
    else:
        dtype = torch.float32
    return torch.as_tensor(obs, dtype=dtype, device=device)


def obs_to_tensor(obs: ObsTree, device: torch.device | str) -> ObsTree:
    """A batch of env observations as the network's input (a dict: entry by entry): uint8
    pixels stay uint8, other integers (Discrete indices) become int64, anything else float32
    (MuJoCo v5 returns float64)."""
    if isinstance(obs, dict):
        return {key: _array_to_tensor(value, device) for key, value in obs.items()}
    return _array_to_tensor(obs, device)
