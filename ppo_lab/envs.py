"""Gymnasium env and vector-env factory, with the wrappers each env family needs.

All vector envs use gymnasium 1.x's default *next-step* autoreset: the step that ends an episode
returns the true final observation, and the following ``step`` call resets that env, ignoring its
action and returning reward 0. The rollout marks those reset steps invalid (see ``rollout.py``).

Wrappers (gymnasium's own wherever one exists):

* every env: ``RecordEpisodeStatistics`` (the logged ``episodic_return`` is the undiscounted,
  unnormalized, unclipped return);
* continuous actions: ``ClipAction`` (the policy's sample is stored unclipped; 37 details,
  continuous detail 5);
* ``normalize_obs``: ``NormalizeObservation`` then clip to ``[-clip_obs, clip_obs]`` (continuous
  details 6-7);
* ``normalize_reward``: ``NormalizeReward`` (running std of the discounted return) then clip to
  ``[-clip_reward, clip_reward]`` (continuous details 8-9);
* Atari: ``AtariPreprocessing`` (no-op reset, max-and-skip, 84x84 grayscale), episodic life,
  fire reset, sign reward clipping, ``FrameStackObservation`` (Atari details 1-7).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import vector as vw

from ppo_lab.checkpoint import torch_from_numpy
from ppo_lab.config import ConfigError, EnvConfig, EnvFamily

#: The pip extra that provides each family's simulator.
FAMILY_EXTRAS = {EnvFamily.box2d: "box2d", EnvFamily.mujoco: "mujoco", EnvFamily.atari: "atari"}


def _register_ale() -> None:
    try:
        ale_py = importlib.import_module("ale_py")
    except ImportError as exc:
        raise ConfigError(
            f"env.family=atari needs ale-py, which is not installed ({exc}); "
            'install it with: pip install -e ".[atari]"'
        ) from None
    gym.register_envs(ale_py)


def check_env(cfg: EnvConfig) -> gym.Env:
    """Build one (unwrapped-by-us) env to check that ``cfg.id`` exists and its simulator is installed.

    Returns:
        The env, for reading its spaces; the caller closes it.

    Raises:
        ConfigError: ``env.id`` is not registered (naming the ids with a similar name), or the
            family's optional dependency is missing (naming the pip extra to install).
    """
    if cfg.family is EnvFamily.atari:
        _register_ale()
    try:
        gym.spec(cfg.id)
    except gym.error.Error as exc:
        close = [k for k in gym.registry if cfg.id.split("-")[0].lower() in k.lower()][:8]
        raise ConfigError(
            f"env.id={cfg.id!r} is not a registered gymnasium id ({exc}). Allowed: a registered id"
            + (f", e.g. {', '.join(close)}" if close else "")
            + "; or one of the env configs (env=cartpole, env=lunarlander, ...)"
        ) from None
    try:
        return _env_fn(cfg, render_mode=None)()
    except gym.error.DependencyNotInstalled as exc:
        extra = FAMILY_EXTRAS.get(cfg.family, cfg.family.value)
        raise ConfigError(
            f"env.id={cfg.id!r} needs an optional dependency that is not installed ({exc}); "
            f'install it with: pip install -e ".[{extra}]"'
        ) from None


def _make_kwargs(cfg: EnvConfig) -> dict[str, Any]:
    """Keyword arguments for ``gymnasium.make`` / ``make_vec``: ``env.kwargs`` plus the episode cap."""
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    return kwargs


def _make_single(cfg: EnvConfig, render_mode: str | None) -> gym.Env:
    kwargs = _make_kwargs(cfg)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if cfg.family is EnvFamily.atari:
        kwargs.setdefault("frameskip", 1)
    return gym.make(cfg.id, **kwargs)


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


def _env_fn(
    cfg: EnvConfig, render_mode: str | None, video_dir: str | None = None
) -> Callable[[], gym.Env]:
    def thunk() -> gym.Env:
        env = _make_single(cfg, render_mode)
        if video_dir is not None:
            # Outermost-but-preprocessing: records the rendered game of the first episode.
            env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda ep: ep == 0,
                                           disable_logger=True)
        return wrap_atari(env, cfg) if cfg.family is EnvFamily.atari else env

    return thunk


def make_vec_env(
    cfg: EnvConfig,
    num_envs: int,
    gamma: float = 0.99,
    render_mode: str | None = None,
    video_dir: str | None = None,
) -> gym.vector.VectorEnv:
    """Build the wrapped vector env of ``num_envs`` copies of ``cfg.id``.

    Seeding happens at the first ``reset(seed=...)``: env i gets ``seed + i``.

    Args:
        cfg: the env config.
        num_envs: number of parallel envs.
        gamma: discount of the return whose running std scales rewards (``normalize_reward``).
        render_mode: passed to ``gymnasium.make`` (e.g. ``rgb_array`` for video).
        video_dir: record the first episode of env 0 there (needs ``render_mode="rgb_array"``
            and moviepy).

    Raises:
        ConfigError: as :func:`check_env`.
    """
    check_env(cfg).close()
    # vector_entry_point only where the env has one (CartPole does); others fall back to sync,
    # so `env.id=<id>` works from any env config.
    batched = cfg.vectorization == "vector_entry_point" and gym.spec(cfg.id).vector_entry_point is not None
    if cfg.family is EnvFamily.atari or not batched or render_mode:
        fns = [_env_fn(cfg, render_mode, video_dir if i == 0 else None) for i in range(num_envs)]
        if cfg.vectorization == "async":
            envs: gym.vector.VectorEnv = gym.vector.AsyncVectorEnv(fns)
        else:
            envs = gym.vector.SyncVectorEnv(fns)
    else:
        envs = gym.make_vec(cfg.id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                            **_make_kwargs(cfg))
    if cfg.family is not EnvFamily.atari:
        envs = vw.RecordEpisodeStatistics(envs)
    if isinstance(envs.single_action_space, gym.spaces.Box):
        envs = vw.ClipAction(envs)
    if cfg.normalize_obs:
        envs = vw.NormalizeObservation(envs)
        bound = cfg.clip_obs
        envs = vw.TransformObservation(envs, lambda obs: np.clip(obs, -bound, bound))
    if cfg.normalize_reward:
        envs = vw.NormalizeReward(envs, gamma=gamma)
        rbound = cfg.clip_reward
        envs = vw.TransformReward(envs, lambda r: np.clip(r, -rbound, rbound))
    return envs


def completed_episodes(infos: dict) -> list[tuple[int, float, int]]:
    """``(env_index, episodic_return, episodic_length)`` of the episodes that ended in this vector
    step, read from ``RecordEpisodeStatistics``' ``info["episode"]`` (vector or per-env wrapper)."""
    episode = infos.get("episode")
    if episode is None:
        return []
    mask = infos.get("_episode")
    if mask is None:
        mask = episode.get("_r")
    if mask is None or not np.any(mask):
        return []
    returns, lengths = np.asarray(episode["r"]), np.asarray(episode["l"])
    return [(int(i), float(returns[i]), int(lengths[i])) for i in np.flatnonzero(mask)]


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
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch_from_numpy(value)
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
    worlds, MuJoCo data, the ALE emulator), so the trainer uses it for ``family=classic`` only.
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
            elif isinstance(current, np.ndarray):
                setattr(obj, key, value.numpy().astype(current.dtype, copy=True))
            elif isinstance(current, np.generic):
                setattr(obj, key, type(current)(value))
            else:
                setattr(obj, key, value)
