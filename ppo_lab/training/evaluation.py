"""Policy evaluation: whole episodes with frozen normalization statistics, seeded per episode."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ppo_lab.config import ActionMasking, EnvConfig
from ppo_lab.envs import (
    completed_episodes,
    eval_env_config,
    load_normalization_state,
    first_action_mask,
    make_vec_env,
    mask_width,
    read_action_mask,
)
from ppo_lab.policies.distributions import action_rng
from ppo_lab.policies.inference import InferencePolicy


def evaluate_policy(
    policy: InferencePolicy,
    env_cfg: EnvConfig,
    episodes: int,
    seed: int,
    deterministic: bool = True,
    normalization: Optional[dict[str, Any]] = None,
    max_steps: int = 1_000_000,
    video_dir: Optional[str] = None,
    action_masking: ActionMasking = ActionMasking.off,
) -> list[tuple[float, int]]:
    """Run ``episodes`` episodes, one per parallel env, env k reset with seed ``seed + k``.

    Args:
        policy: the acting policy (``network.inference_policy()``: a snapshot of the weights).
        env_cfg: env config (the same wrappers as in training).
        episodes: number of episodes.
        seed: base seed.
        deterministic: mode / mean action (True) or sampled actions (False).
        normalization: saved normalization statistics (``envs.normalization_state``), loaded
            frozen into the eval env.
        max_steps: safety cap on vector steps.
        video_dir: record the first episode there (gymnasium ``RecordVideo``).
        action_masking: the run's ``agent.action_masking``: act with the eval env's masks
            (``envs/masks.py``) when it resolves to masking (``auto``: the env gives masks).

    Returns:
        ``[(episodic_return, episodic_length)] * episodes``: the raw (unnormalized, unclipped,
        whole-game for Atari) return and the length in env steps.

    Raises:
        RuntimeError: some episode did not end within ``max_steps``.
        ConfigError: ``action_masking=on`` and the eval env gives no masks.
    """
    envs = make_vec_env(eval_env_config(env_cfg), episodes,
                        render_mode="rgb_array" if video_dir else None, video_dir=video_dir)
    try:
        if normalization:
            load_normalization_state(envs, normalization, freeze=True)
        obs, infos = envs.reset(seed=seed)
        width = mask_width(envs.single_action_space)
        masked = first_action_mask(action_masking, obs, infos, envs.single_action_space, env_cfg.id) is not None
        results: list[Optional[tuple[float, int]]] = [None] * episodes
        rng = action_rng(seed)  # stochastic evaluation: draws fixed by the eval seed
        recurrent = getattr(policy, "state_size", 0) > 0
        if recurrent:
            policy.reset_state(episodes)  # a zero state per episode
        episode_start = np.ones(episodes, dtype=bool)
        for _ in range(max_steps):
            # Keyword arguments only where needed: a user's feed-forward policy may take neither.
            kwargs: dict[str, Any] = {}
            if masked:
                kwargs["mask"] = read_action_mask(obs, infos, width)
            if recurrent:
                kwargs["episode_start"] = episode_start
            action, _, _ = policy.act(obs, rng, deterministic, **kwargs)
            obs, _, terminated, truncated, infos = envs.step(action)
            episode_start = np.logical_or(terminated, truncated)  # later episodes are not scored
            for i, ret, length in completed_episodes(infos):
                if results[i] is None:
                    results[i] = (ret, length)
            if all(r is not None for r in results):
                break
    finally:
        envs.close()
    if any(r is None for r in results):
        raise RuntimeError(f"evaluation: an episode did not end within {max_steps} steps")
    return results  # type: ignore[return-value]


