"""The env and vector-env factory: ids (``module:EnvId`` too), the family's wrappers, the user's
wrappers (``env.wrappers``), and the vector-level wrappers of PPO.

All vector envs use gymnasium 1.x's default *next-step* autoreset: the step that ends an episode
returns the true final observation, and the following ``step`` call resets that env, ignoring its
action and returning reward 0. The rollout marks those reset steps invalid (``training/rollout.py``).

The wrapper stack of one env, innermost first (gymnasium's own wrappers wherever one exists):

1. ``gymnasium.make(id, **family kwargs, **env.kwargs)`` (and ``RecordVideo`` for eval videos);
2. the family's wrappers (Atari: ``AtariPreprocessing``, episodic life, fire reset, sign reward
   clipping, frame stack; ``envs/atari.py``); with them ``RecordEpisodeStatistics``, so the logged
   ``episodic_return`` is the env's own undiscounted, unnormalized, unclipped return;
3. the user's ``env.wrappers``, in the order given: they see what the family produces and shape
   what the network sees, and the logged return above stays the env's own;
4. the observation's structure (:func:`select_observation`), last, so it applies to what the
   user's wrappers produce too: a ``Tuple`` observation becomes a ``Dict`` keyed ``"0"``,
   ``"1"``... (``TransformObservation``), so the combined extractor handles both with one code
   path; ``env.obs_keys`` then keeps the listed Dict entries (``FilterObservation``; an
   ``action_mask`` entry is kept too, as the source of the action mask);
5. vector level: ``ClipAction`` for continuous actions (the policy's sample is stored unclipped;
   37 details, continuous detail 5), then observation normalization clipped to ``[-clip_obs,
   clip_obs]`` (continuous details 6-7) and reward scaling clipped to ``[-clip_reward,
   clip_reward]`` (details 8-9): gymnasium's ``NormalizeObservation`` / ``NormalizeReward`` and
   their clips, as one wrapper whose state a population shares (``envs/normalization.py``);
   last, so they normalize exactly what the network receives.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import vector as vw

from ppo_lab.config import ConfigError, EnvConfig
from ppo_lab.config.targets import instantiate_node
from ppo_lab.envs.families import FAMILY_TARGETS, EnvFamily
from ppo_lab.envs.normalization import NormalizeVector


def env_family(cfg: EnvConfig) -> EnvFamily:
    """Instantiate ``cfg.family``: a short name (``classic``...) or a ``_target_`` node.

    Raises:
        ConfigError: an unknown name, or a target that cannot be imported or is no EnvFamily.
    """
    node = family_node(cfg.family)
    family = instantiate_node("env.family", node)
    if not isinstance(family, EnvFamily):
        raise ConfigError(
            f"env.family={node['_target_']} is a {type(family).__name__}, not an EnvFamily; allowed: "
            "a subclass of ppo_lab.envs.families.EnvFamily"
        )
    return family


def family_node(value: Any) -> dict[str, Any]:
    """``env.family`` as a ``_target_`` dict (a short name stands for a built-in family).

    Raises:
        ConfigError: a name that is not a built-in family.
    """
    if isinstance(value, str):
        if value not in FAMILY_TARGETS:
            raise ConfigError(
                f"env.family={value!r} is not a family; allowed: {', '.join(FAMILY_TARGETS)}, or "
                "'env.family={_target_: <module>.<YourFamily>}'"
            )
        return {"_target_": FAMILY_TARGETS[value]}
    if isinstance(value, dict) and "_target_" in value:
        return dict(value)
    raise ConfigError(f"env.family={value!r} is not allowed: a family name or a dict with _target_")


def split_env_id(env_id: str) -> tuple[Optional[str], str]:
    """``"mymod:MyEnv-v0"`` -> ``("mymod", "MyEnv-v0")``; ``"CartPole-v1"`` -> ``(None, "CartPole-v1")``."""
    if ":" in env_id:
        module, name = env_id.split(":", 1)
        return module, name
    return None, env_id


def resolve_env_id(env_id: str) -> str:
    """Import ``module`` of a ``module:EnvId`` id (as ``gymnasium.make`` does) and return the
    registered id, checked against gymnasium's registry.

    Raises:
        ConfigError: the module fails to import (naming it and the error), or the id is not
            registered (naming similar ids, and ``env=pong`` for ``ALE/`` ids).
    """
    module, name = split_env_id(env_id)
    if module is not None:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"env.id={env_id!r}: importing module {module!r} failed ({type(exc).__name__}: {exc}); "
                "allowed: a module on sys.path (PYTHONPATH) that registers the id, then its id"
            ) from None
    try:
        gym.spec(name)
    except gym.error.Error as exc:
        if name.startswith("ALE/"):
            raise ConfigError(
                f"env.id={env_id!r} is an Atari id, made by the atari family; allowed: an Atari env "
                "config (env=breakout, env=pong) or env.family=atari with this id"
            ) from None
        close = [k for k in gym.registry if name.split("-")[0].lower() in k.lower()][:8]
        raise ConfigError(
            f"env.id={env_id!r} is not a registered gymnasium id ({exc}). Allowed: a registered id"
            + (f", e.g. {', '.join(close)}" if close else "")
            + "; '<module>:<EnvId>' for an id your module registers; or one of the env configs "
            "(env=cartpole, env=lunarlander, ...)"
        ) from None
    return name


def wrapper_nodes(cfg: EnvConfig) -> list[dict[str, Any]]:
    """``env.wrappers`` as ``_target_`` dicts (a dotted path stands for a wrapper without kwargs).

    Raises:
        ConfigError: an entry is neither a dotted path nor a dict with ``_target_``.
    """
    nodes = []
    for i, entry in enumerate(cfg.wrappers):
        if isinstance(entry, str):
            nodes.append({"_target_": entry})
        elif isinstance(entry, dict) and "_target_" in entry:
            nodes.append(dict(entry))
        else:
            raise ConfigError(
                f"env.wrappers[{i}]={entry!r} is not allowed: a dotted path of a gymnasium wrapper "
                "(minigrid.wrappers.ImgObsWrapper) or a dict {_target_: <path>, <kwarg>: <value>}"
            )
    return nodes


def apply_wrappers(env: gym.Env, nodes: list[dict[str, Any]]) -> gym.Env:
    """Wrap ``env`` with each ``_target_`` node in order: ``Wrapper(env, **kwargs)``."""
    for i, node in enumerate(nodes):
        env = instantiate_node(f"env.wrappers[{i}]", node, env)
    return env


def check_env(cfg: EnvConfig) -> gym.Env:
    """Build one env, wrapped as in training, to check ``cfg`` before any run starts.

    Returns:
        The env, for reading its spaces; the caller closes it.

    Raises:
        ConfigError: as :func:`resolve_env_id`; the family's optional dependency is missing
            (naming the pip extra to install); ``env.max_episode_steps`` < 1; a wrapper fails;
            ``env.obs_keys`` does not fit (:func:`select_observation`); ``env.normalize_obs``
            on a Dict observation (refused: per-entry statistics are not kept).
    """
    if cfg.max_episode_steps is not None and cfg.max_episode_steps < 1:
        raise ConfigError(
            f"env.max_episode_steps={cfg.max_episode_steps} is not allowed: a positive number of "
            "env steps, or null for the id's registered limit"
        )
    family = env_family(cfg)
    family.register()
    resolve_env_id(cfg.id)
    try:
        env = _env_fn(cfg, family, render_mode=None)()
    except gym.error.DependencyNotInstalled as exc:
        extra = family.extra or family.name
        raise ConfigError(
            f"env.id={cfg.id!r} needs an optional dependency that is not installed ({exc}); "
            f'install it with: pip install -e ".[{extra}]"'
        ) from None
    if cfg.normalize_obs and isinstance(env.observation_space, gym.spaces.Dict):
        space = env.observation_space
        env.close()
        floats = [k for k, sub in space.spaces.items()
                  if isinstance(sub, gym.spaces.Box) and np.issubdtype(sub.dtype, np.floating)]
        raise ConfigError(
            f"env.normalize_obs=true is not supported on Dict observations ({space}; float entries that "
            f"would be normalized: {', '.join(floats) or 'none'}); allowed: env.normalize_obs=false, or "
            "normalize an entry with your own wrapper through env.wrappers"
        )
    return env


def tuple_as_dict(env: gym.Env) -> gym.Env:
    """A ``Tuple`` observation as a ``Dict`` keyed ``"0"``, ``"1"``... (gymnasium's
    ``TransformObservation``), so Dict and Tuple observations share one code path."""
    space = gym.spaces.Dict({str(i): sub for i, sub in enumerate(env.observation_space.spaces)})
    return gym.wrappers.TransformObservation(env, lambda obs: {str(i): o for i, o in enumerate(obs)}, space)


def select_observation(env: gym.Env, cfg: EnvConfig) -> gym.Env:
    """The observation's structure (step 4 of the module docstring): ``Tuple`` -> ``Dict``, then
    ``env.obs_keys`` (and ``action_mask``, when the env has one) kept through
    ``FilterObservation``.

    Raises:
        ConfigError: ``env.obs_keys`` on a non-Dict observation, or naming an entry the
            observation does not have (naming the available ones).
    """
    if isinstance(env.observation_space, gym.spaces.Tuple):
        env = tuple_as_dict(env)
    if cfg.obs_keys is None:
        return env
    space = env.observation_space
    if not isinstance(space, gym.spaces.Dict):
        raise ConfigError(
            f"env.obs_keys={list(cfg.obs_keys)} selects entries of a Dict observation, but the env gives "
            f"{space}; allowed: env.obs_keys=null"
        )
    unknown = [k for k in cfg.obs_keys if k not in space.spaces]
    if unknown:
        raise ConfigError(
            f"env.obs_keys: {', '.join(map(repr, unknown))} is not an entry of the observation; available "
            f"keys: {', '.join(space.spaces)}"
        )
    keys = list(cfg.obs_keys) + (["action_mask"] if "action_mask" in space.spaces
                                 and "action_mask" not in cfg.obs_keys else [])
    return gym.wrappers.FilterObservation(env, keys)


def _make_kwargs(cfg: EnvConfig, family: EnvFamily) -> dict[str, Any]:
    """Keyword arguments for ``gymnasium.make`` / ``make_vec``: the family's, ``env.kwargs``
    (winning), and the episode cap."""
    kwargs: dict[str, Any] = {**family.make_kwargs(cfg), **cfg.kwargs}
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    return kwargs


def _env_fn(
    cfg: EnvConfig, family: EnvFamily, render_mode: str | None, video_dir: str | None = None
) -> Callable[[], gym.Env]:
    kwargs = _make_kwargs(cfg, family)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    wrappers = wrapper_nodes(cfg)

    def thunk() -> gym.Env:
        # The whole id, module part too: a worker process of an async vector env started by
        # spawn / forkserver imports the user's module through gymnasium.make itself.
        env = gym.make(cfg.id, **kwargs)
        if video_dir is not None:
            # Right after make: records the rendered game of the first episode.
            env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda ep: ep == 0,
                                           disable_logger=True)
        env = family.wrap(env, cfg)
        if not family.records_episodes:
            env = gym.wrappers.RecordEpisodeStatistics(env)
        return select_observation(apply_wrappers(env, wrappers), cfg)

    return thunk


def make_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """One env as training builds each of its envs: ``gymnasium.make``, the family's wrappers and
    the user's ``env.wrappers`` (stack: module docstring), without the vector-level wrappers
    (action clipping, normalization), which ``Agent.predict`` applies itself.

    Raises:
        ConfigError: as :func:`check_env`.
    """
    if render_mode is None:
        return check_env(cfg)  # the checked env is already the one asked for
    check_env(cfg).close()
    return _env_fn(cfg, env_family(cfg), render_mode)()


def make_vec_env(
    cfg: EnvConfig,
    num_envs: int,
    gamma: float = 0.99,
    render_mode: str | None = None,
    video_dir: str | None = None,
) -> gym.vector.VectorEnv:
    """Build the wrapped vector env of ``num_envs`` copies of ``cfg.id`` (stack: module docstring).

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
    family = env_family(cfg)
    _, env_id = split_env_id(cfg.id)
    # vector_entry_point only where the env has one (CartPole does) and nothing must wrap each
    # env; others fall back to sync, so `env.id=<id>` works from any env config.
    batched = (cfg.vectorization == "vector_entry_point" and family.allows_vector_entry_point
               and not cfg.wrappers and cfg.obs_keys is None and gym.spec(env_id).vector_entry_point is not None)
    if batched and not render_mode:
        envs: gym.vector.VectorEnv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                                  **_make_kwargs(cfg, family))
        envs = vw.RecordEpisodeStatistics(envs)
    else:
        fns = [_env_fn(cfg, family, render_mode, video_dir if i == 0 else None) for i in range(num_envs)]
        if cfg.vectorization == "async":
            envs = gym.vector.AsyncVectorEnv(fns)
        else:
            envs = gym.vector.SyncVectorEnv(fns)
    if isinstance(envs.single_action_space, gym.spaces.Box):
        envs = clip_actions(envs)
    if cfg.normalize_obs or cfg.normalize_reward:
        # Outermost: a population's members normalize together (``envs/normalization.py``).
        envs = NormalizeVector(envs, cfg.normalize_obs, cfg.clip_obs, cfg.normalize_reward, cfg.clip_reward, gamma)
    return envs


def clip_actions(envs: gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """Clip a continuous action batch ``(N, *shape)`` to the bounds when stepping (37 details,
    continuous detail 5): gymnasium's ``ClipAction`` as one ``np.clip`` over the batch, where
    ``vw.ClipAction`` clips each env's action apart (a loop over the batch, about a third of the
    MuJoCo step's own cost). Same values (cast to the space's dtype, as ``vw.ClipAction`` writes
    them) and the same spaces (unbounded ``Box``, so a policy may sample outside the bounds).
    """
    space = envs.single_action_space
    low, high, dtype = space.low, space.high, space.dtype
    unbounded = gym.spaces.Box(-np.inf, np.inf, space.shape, dtype)
    return vw.TransformAction(envs, lambda actions: np.clip(np.asarray(actions, dtype=dtype), low, high),
                              single_action_space=unbounded)


def eval_env_config(cfg: EnvConfig) -> EnvConfig:
    """The env config of evaluation: ``sync`` vectorization, so sub-env k is reset with seed + k
    (a batched env such as CartPoleVectorEnv shares one RNG across its sub-envs)."""
    return dataclasses.replace(cfg, vectorization="sync")


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
