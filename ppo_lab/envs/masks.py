"""Invalid-action masks: where an env gives them and how a run decides to use them.

Two conventions are read, both with 1 (True) = valid:

* ``info["action_mask"]``: gymnasium's (Taxi-v4), int8 ``(n,)`` per env. A vector env stacks it
  to ``infos["action_mask"]`` ``(N, n)`` with ``infos["_action_mask"]`` ``(N,)`` telling which
  envs reported one; with next-step autoreset the reset step's info carries the new episode's
  mask, and the first ``envs.reset`` info the first one.
* a Dict observation's ``action_mask`` entry: PettingZoo's (``obs["action_mask"]`` ``(N, n)``).

The width ``n`` is the number of actions (``Discrete(n)``) or ``sum(nvec)`` (``MultiDiscrete``,
the components' masks side by side). ``agent.action_masking`` (``auto`` / ``on`` / ``off``)
decides at the first reset (:func:`masking_enabled`).
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np

from ppo_lab.config import ActionMasking, ConfigError, EnvConfig
from ppo_lab.envs.factory import make_env

#: The info key and the Dict observation entry that hold a mask.
MASK_KEY = "action_mask"


def mask_width(action_space: gym.Space) -> Optional[int]:
    """Width of a mask of ``action_space``: ``n`` (Discrete), ``sum(nvec)`` (MultiDiscrete); None
    for spaces that cannot be masked (Box, MultiBinary)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    return None


def read_action_mask(obs: Any, infos: Optional[dict], width: Optional[int] = None) -> Optional[np.ndarray]:
    """The mask valid for ``obs``, from a vector env's ``obs`` / ``infos``.

    Args:
        obs: the vector env's observations; a dict with ``action_mask`` is read first.
        infos: the vector env's infos (``infos["action_mask"]`` ``(N, n)``).
        width: the expected mask width (:func:`mask_width`), checked when given.

    Returns:
        ``(N, width)`` bool, True = valid, or None when neither source has a mask. Envs whose info
        lacks a mask this step (``infos["_action_mask"]`` False) get an all-valid row.

    Raises:
        ConfigError: a mask whose width is not ``width``.
    """
    if isinstance(obs, dict) and MASK_KEY in obs:
        raw, present = obs[MASK_KEY], None
    elif infos and MASK_KEY in infos:
        raw, present = infos[MASK_KEY], infos.get("_" + MASK_KEY)
    else:
        return None
    mask = np.asarray(raw).astype(bool)
    if present is not None and not np.all(present):
        mask[~np.asarray(present, dtype=bool)] = True
    if width is not None and mask.shape[-1] != width:
        raise ConfigError(
            f"the env's action_mask has shape {mask.shape[-1:]}, but its action space needs masks of "
            f"{width} entries (Discrete(n): n; MultiDiscrete: sum(nvec)); allowed: a mask of {width} "
            "entries, or agent.action_masking=off"
        )
    return mask


def masking_enabled(mode: ActionMasking, mask: Optional[np.ndarray], action_space: gym.Space, env_id: str) -> bool:
    """Resolve ``agent.action_masking`` for an env, given the mask it gave at its first reset.

    ``off``: False. ``auto``: True when the env gave a mask and the action space can be masked.
    ``on``: True, or :class:`ConfigError` when the env gives no mask or its actions cannot be masked.
    """
    if mode is ActionMasking.off:
        return False
    maskable = mask_width(action_space) is not None
    if mode is ActionMasking.on and mask is None:
        raise ConfigError(
            f"agent.action_masking=on, but env.id={env_id!r} gives no action mask at reset (neither "
            f"info['{MASK_KEY}'] nor a Dict observation entry '{MASK_KEY}'); allowed: "
            "agent.action_masking=auto or off, or an env that provides masks"
        )
    if mode is ActionMasking.on and not maskable:
        raise ConfigError(
            f"agent.action_masking=on, but env.id={env_id!r} has action space {action_space}; allowed: "
            "masks of Discrete or MultiDiscrete actions, or agent.action_masking=auto or off"
        )
    return mask is not None and maskable


def first_action_mask(
    mode: ActionMasking, obs: Any, infos: Optional[dict], action_space: gym.Space, env_id: str
) -> Optional[np.ndarray]:
    """The ``(N, width)`` bool mask to act with in a vector env's first observations (``obs``,
    ``infos`` of its ``reset``; a single env's give ``(width,)``), or None when the run does not
    mask (:func:`masking_enabled`).

    Raises:
        ConfigError: as :func:`masking_enabled` and :func:`read_action_mask`.
    """
    if mode is ActionMasking.off:
        return None
    mask = read_action_mask(obs, infos, mask_width(action_space))
    return mask if masking_enabled(mode, mask, action_space, env_id) else None


def check_masks_available(cfg: EnvConfig, mode: ActionMasking, seed: int) -> None:
    """For ``agent.action_masking=on``: build one env, reset it and refuse (before anything is
    written) when it gives no mask; nothing to check for ``auto`` and ``off``.

    Raises:
        ConfigError: as :func:`masking_enabled`.
    """
    if mode is not ActionMasking.on:
        return
    env = make_env(cfg)
    try:
        first_action_mask(mode, *env.reset(seed=seed), env.action_space, cfg.id)
    finally:
        env.close()
