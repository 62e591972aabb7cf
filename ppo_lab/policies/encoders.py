"""Observation encoders: what a network does to an observation space before its trunk.

Chosen from the single env's observation space (SB3's ``preprocess_obs`` / ``is_image_space``):

* ``Box`` vectors (and any non-image ``Box``): flattened, as float32 values (:class:`~ppo_lab.policies.layers.MLP`);
* ``Box`` images (3-D uint8): the Nature CNN, channels first; channels-last ``(H, W, C)`` spaces
  are detected from the shape (the smallest dimension is the channels) and permuted inside the
  network, so the rollout buffer stores the env's uint8 frames as they are;
* ``Discrete(n)``: one-hot ``(n,)``; ``MultiDiscrete(nvec)``: the components' one-hots side by
  side ``(sum(nvec),)``; ``MultiBinary(n)``: its bits as float32.

``Dict`` spaces (and ``Tuple`` ones, which the env factory turns into a ``Dict`` keyed ``"0"``,
``"1"``...) go through the combined extractor (``policies/extractors.py``): one of the encoders
above per entry (a small CNN for images too small for the Nature CNN), outputs concatenated in
sorted key order. :func:`vector_encoder` itself encodes one non-Dict space.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppo_lab.config import ConfigError


def is_image_space(space: gym.Space) -> bool:
    """A 3-D uint8 ``Box``: frames, channels first or last."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8


def is_channels_last(space: gym.spaces.Box) -> bool:
    """Whether an image space is ``(H, W, C)``: its smallest dimension is the last one (SB3's rule;
    ``(4, 84, 84)`` frame stacks and ``(3, 64, 64)`` are channels first, ``(96, 96, 3)`` last)."""
    return int(np.argmin(space.shape)) == 2 and space.shape[2] < space.shape[0]


def image_chw(space: gym.spaces.Box) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image space, whichever layout it has."""
    h_w_c = space.shape
    return (h_w_c[2], h_w_c[0], h_w_c[1]) if is_channels_last(space) else tuple(space.shape)  # type: ignore[return-value]


class OneHot(nn.Module):
    """``Discrete(n)`` or ``MultiDiscrete(nvec)`` observations ``(B,)`` / ``(B, k)`` (any numeric
    dtype holding integers, counted from ``start``) -> float32 one-hots ``(B, n)`` / ``(B, sum(nvec))``."""

    def __init__(self, sizes: list[int], start: list[int]) -> None:
        super().__init__()
        self.sizes = [int(n) for n in sizes]
        self.register_buffer("start", torch.tensor(start, dtype=torch.long), persistent=False)

    def forward(self, obs: Tensor) -> Tensor:
        index = obs.long().reshape(len(obs), -1) - self.start
        return torch.cat([F.one_hot(index[:, i], n) for i, n in enumerate(self.sizes)], dim=1).float()


class Bits(nn.Module):
    """``MultiBinary`` observations ``(B, *shape)`` -> float32 ``(B, prod(shape))``."""

    def forward(self, obs: Tensor) -> Tensor:
        return obs.reshape(len(obs), -1).float()


def vector_encoder(space: gym.Space) -> tuple[nn.Module | None, int]:
    """The encoder of a non-image space and the width of its output.

    Returns:
        ``(None, prod(shape))`` for a ``Box`` (the MLP flattens it itself), ``(OneHot, n)``,
        ``(OneHot, sum(nvec))`` or ``(Bits, prod(shape))``.

    Raises:
        ConfigError: a ``Dict``, ``Tuple`` or other space (Dict observations have their own
            extractor, ``policies/extractors.py``), with the way out.
    """
    if isinstance(space, gym.spaces.Box):
        return None, int(np.prod(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return OneHot([int(space.n)], [int(space.start)]), int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec, start = space.nvec.reshape(-1), np.broadcast_to(space.start, space.nvec.shape).reshape(-1)
        return OneHot(list(nvec), [int(s) for s in start]), int(nvec.sum())
    if isinstance(space, gym.spaces.MultiBinary):
        return Bits(), int(np.prod(space.shape))
    raise ConfigError(
        f"observation space {space} is not supported yet; allowed: Box (vectors or images), Discrete, "
        "MultiDiscrete, MultiBinary. For Dict/Tuple observations, flatten them with "
        "'env.wrappers=[gymnasium.wrappers.FlattenObservation]' (or select an image entry with a wrapper, "
        "e.g. minigrid.wrappers.ImgObsWrapper)"
    )


def buffer_dtype(space: gym.Space) -> type:
    """The rollout buffer's dtype for observations of ``space``: uint8 for uint8 (pixels stay
    bytes), int64 for ``Discrete`` / ``MultiDiscrete`` (exact indices), float32 otherwise."""
    if space.dtype == np.uint8:
        return np.uint8
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        return np.int64
    return np.float32
