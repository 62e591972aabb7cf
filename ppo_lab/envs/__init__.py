"""Environments: the factory (ids, families, user wrappers), Atari, normalization, env state."""

from ppo_lab.envs.env_state import EnvStateSnapshot, env_state, load_env_state, snapshot_fits
from ppo_lab.envs.factory import (
    check_env,
    completed_episodes,
    env_family,
    eval_env_config,
    make_env,
    make_vec_env,
    resolve_env_id,
)
from ppo_lab.envs.families import EnvFamily
from ppo_lab.envs.masks import (
    MASK_KEY,
    check_masks_available,
    first_action_mask,
    mask_width,
    masking_enabled,
    read_action_mask,
)
from ppo_lab.envs.normalization import (
    NormalizationStats,
    load_normalization_state,
    normalization_from_tensors,
    normalization_state,
    normalization_to_tensors,
)
from ppo_lab.envs.atari import sign_reward, wrap_atari, wrap_atari_game

__all__ = [
    "MASK_KEY", "check_masks_available", "first_action_mask", "mask_width", "masking_enabled", "read_action_mask",
    "EnvFamily", "EnvStateSnapshot", "NormalizationStats", "check_env", "completed_episodes",
    "env_family", "env_state", "eval_env_config", "load_env_state", "load_normalization_state",
    "make_env", "make_vec_env", "normalization_from_tensors", "normalization_state", "normalization_to_tensors",
    "resolve_env_id", "sign_reward", "snapshot_fits", "wrap_atari", "wrap_atari_game",
]
