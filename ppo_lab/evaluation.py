"""Policy evaluation: run whole episodes with frozen normalization statistics."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ppo_lab.config import EnvConfig
from ppo_lab.envs import completed_episodes, load_normalization_state, make_vec_env
from ppo_lab.networks import ActorCritic


@torch.inference_mode()
def evaluate_policy(
    network: ActorCritic,
    env_cfg: EnvConfig,
    episodes: int,
    seed: int,
    deterministic: bool = True,
    normalization: Optional[dict[str, Any]] = None,
    device: torch.device | str = "cpu",
    max_steps: int = 1_000_000,
) -> list[tuple[float, int]]:
    """Run ``episodes`` episodes, one per parallel env, env k reset with seed ``seed + k``.

    Args:
        network: the policy.
        env_cfg: env config (the same wrappers as in training).
        episodes: number of episodes.
        seed: base seed.
        deterministic: mode / mean action (True) or sampled actions (False).
        normalization: saved normalization statistics (``envs.normalization_state``), loaded
            frozen into the eval env.
        device: device of ``network``.
        max_steps: safety cap on vector steps.

    Returns:
        ``[(episodic_return, episodic_length)] * episodes``: the raw (unnormalized, unclipped,
        whole-game for Atari) return and the length in env steps.

    Raises:
        RuntimeError: some episode did not end within ``max_steps``.
    """
    envs = make_vec_env(env_cfg, episodes)
    try:
        if normalization:
            load_normalization_state(envs, normalization, freeze=True)
        obs, _ = envs.reset(seed=seed)
        results: list[Optional[tuple[float, int]]] = [None] * episodes
        was_training = network.training
        network.eval()
        for _ in range(max_steps):
            action, _, _ = network.act(torch.as_tensor(np.asarray(obs), device=device), deterministic)
            obs, _, _, _, infos = envs.step(action.cpu().numpy())
            for i, ret, length in completed_episodes(infos):
                if results[i] is None:
                    results[i] = (ret, length)
            if all(r is not None for r in results):
                break
        network.train(was_training)
    finally:
        envs.close()
    if any(r is None for r in results):
        raise RuntimeError(f"evaluation: an episode did not end within {max_steps} steps")
    return results  # type: ignore[return-value]
