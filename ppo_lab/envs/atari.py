"""The Atari family: ale-py v5 ids made with ``frameskip=1`` and wrapped as in Mnih et al. 2015 /
CleanRL ``ppo_atari.py`` (Atari details 1-7): no-op reset, max-and-skip, 84x84 grayscale,
episodic life, fire reset, sign reward clipping, frame stack.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np

from ppo_lab.config import ConfigError, EnvConfig
from ppo_lab.envs.families import EnvFamily


def _register_ale() -> None:
    try:
        ale_py = importlib.import_module("ale_py")
    except ImportError as exc:
        raise ConfigError(
            f"env.family=atari needs ale-py, which is not installed ({exc}); "
            'install it with: pip install -e ".[atari]"'
        ) from None
    gym.register_envs(ale_py)


class EpisodicLife(gym.Wrapper):
    """Signal ``terminated`` when a life is lost; reset the game only when it is really over
    (Atari detail 3; Mnih et al. 2015). After a life loss, ``reset`` takes one no-op step instead
    of restarting, so the next "episode" continues the same game."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE after reset in games that wait for it (Atari detail 4)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def sign_reward(reward: float) -> float:
    """Atari detail 6: clip the training reward to {-1, 0, +1} by its sign."""
    return float(np.sign(reward))


def wrap_atari(env: gym.Env, cfg: EnvConfig) -> gym.Env:
    """The Atari stack, innermost first: AtariPreprocessing (no-op reset, max-and-skip, resize,
    grayscale) -> RecordEpisodeStatistics (real game score over all lives) -> EpisodicLife ->
    FireReset -> sign reward clipping -> FrameStackObservation. Observations: ``(frame_stack,
    screen_size, screen_size)`` uint8."""
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=cfg.screen_size,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    return wrap_atari_game(env, cfg)


def wrap_atari_game(env: gym.Env, cfg: EnvConfig) -> gym.Env:
    """The part of :func:`wrap_atari` after frame preprocessing: RecordEpisodeStatistics ->
    EpisodicLife -> FireReset -> sign reward clipping -> FrameStackObservation. Needs only
    ``env.unwrapped.ale.lives()`` and ``get_action_meanings()`` (so tests can drive it)."""
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if cfg.episodic_life:
        env = EpisodicLife(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    if cfg.clip_reward_sign:
        env = gym.wrappers.TransformReward(env, sign_reward)
    return gym.wrappers.FrameStackObservation(env, cfg.frame_stack)


class AtariFamily(EnvFamily):
    """ale-py v5 ids made with ``frameskip=1`` and wrapped by :func:`wrap_atari`."""

    name = "atari"
    extra = "atari"
    records_episodes = True  # inside the life-loss and reward-clipping wrappers: the real score
    allows_vector_entry_point = False

    def register(self) -> None:
        _register_ale()

    def make_kwargs(self, cfg: EnvConfig) -> dict[str, Any]:
        return {"frameskip": 1}  # AtariPreprocessing does the frame skipping (max-pooled)

    def wrap(self, env: gym.Env, cfg: EnvConfig) -> gym.Env:
        return wrap_atari(env, cfg)
