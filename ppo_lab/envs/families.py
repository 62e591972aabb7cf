"""Env families: what a family of simulators adds around ``gymnasium.make``.

A family is chosen per env config (``env.family``) by a short name (``classic``, ``box2d``,
``mujoco``, ``atari``, ``minigrid``) or, for a user's own family, by a ``_target_`` node that Hydra
instantiates (``'env.family={_target_: mypkg.ProcgenFamily}'``). The protocol a family meets is
:class:`EnvFamily`; subclass it and override what differs.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym

from ppo_lab.config import ConfigError, EnvConfig

#: Short names of the built-in families and the classes they stand for.
FAMILY_TARGETS = {
    "classic": "ppo_lab.envs.families.ClassicFamily",
    "box2d": "ppo_lab.envs.families.Box2DFamily",
    "mujoco": "ppo_lab.envs.families.MujocoFamily",
    "atari": "ppo_lab.envs.atari.AtariFamily",
    "popgym": "ppo_lab.envs.families.PopgymFamily",
    "minigrid": "ppo_lab.envs.families.MiniGridFamily",
}


class EnvFamily:
    """The protocol of an env family; the defaults are gymnasium's plain envs.

    Attributes:
        name: shown in messages (``env.family=<name>``).
        extra: the pip extra that installs the family's simulator (named when it is missing).
        exact_state: the env's whole state is numpy data (classic control), so a checkpoint can
            snapshot it mid-episode and a resumed run continues the same episodes exactly.
        records_episodes: :meth:`wrap` adds ``RecordEpisodeStatistics`` itself, at the place where
            the logged return must be measured (Atari: the game score over all lives); otherwise
            the vector env records the return of the env as made.
        allows_vector_entry_point: the family's envs may use the env's own batched implementation
            (``env.vectorization=vector_entry_point``); false when :meth:`wrap` must see each env.
    """

    name: str = "custom"
    extra: Optional[str] = None
    exact_state: bool = False
    records_episodes: bool = False
    allows_vector_entry_point: bool = True

    def register(self) -> None:
        """Make the family's ids known to gymnasium (e.g. ``gym.register_envs(ale_py)``).

        Raises:
            ConfigError: the family's package is not installed (naming the extra).
        """

    def make_kwargs(self, cfg: EnvConfig) -> dict[str, Any]:
        """Keyword arguments the family adds to ``gymnasium.make`` (``env.kwargs`` wins)."""
        return {}

    def wrap(self, env: gym.Env, cfg: EnvConfig) -> gym.Env:
        """The family's own per-env wrappers, applied right after ``gymnasium.make``."""
        return env


class ClassicFamily(EnvFamily):
    """gymnasium's classic control (CartPole, Acrobot, Pendulum...): pure numpy, exact resume."""

    name = "classic"
    exact_state = True


class Box2DFamily(EnvFamily):
    """Box2D envs (LunarLander, BipedalWalker, CarRacing); needs the ``box2d`` extra."""

    name = "box2d"
    extra = "box2d"


class MujocoFamily(EnvFamily):
    """MuJoCo envs (HalfCheetah, Hopper...); needs the ``mujoco`` extra. Normalization is set in
    the env config (``env.normalize_obs``, ``env.normalize_reward``), not here."""

    name = "mujoco"
    extra = "mujoco"


class PopgymFamily(EnvFamily):
    """POPGym's memory tasks (``popgym-PositionOnlyCartPoleEasy-v0``...; Morad et al. 2023);
    needs the ``popgym`` extra. Importing ``popgym`` registers the ids."""

    name = "popgym"
    extra = "popgym"

    def register(self) -> None:
        try:
            import popgym  # noqa: F401  (registers the popgym-* ids with gymnasium)
        except ImportError as err:
            raise ConfigError(f'env.family=popgym needs the popgym package ({err}); install it with: '
                              'pip install -e ".[popgym]"') from None


class MiniGridFamily(EnvFamily):
    """MiniGrid grid worlds (``minigrid`` extra): Dict observations (``image``, ``direction``,
    ``mission``; ``env.obs_keys`` selects), and state held in Python objects, so no exact resume."""

    name = "minigrid"
    extra = "minigrid"

    def register(self) -> None:
        """Import ``minigrid``, which registers the ``MiniGrid-*`` ids.

        Raises:
            ConfigError: minigrid is not installed (naming the extra).
        """
        try:
            import minigrid  # noqa: F401  (registers the ids)
        except ImportError:
            raise ConfigError(
                'env.family=minigrid needs the minigrid package; install it with: pip install -e ".[minigrid]"'
            ) from None
