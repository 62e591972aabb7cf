"""Observation and reward normalization (37 details, continuous details 6-9) for one vector env or
for the members of a population at once: the wrapper, its running statistics (saved in
checkpoints, restored, frozen for evaluation).

:class:`NormalizeVector` does what gymnasium's vector ``NormalizeObservation`` then
``TransformObservation`` (clip), ``NormalizeReward`` then ``TransformReward`` (clip) do, value for
value and dtype for dtype (``tests/test_normalization.py`` pins it against them), in one wrapper
whose state is a row of a :class:`NormalizationStore`. Alone (a solo run, evaluation) the store
has one row. In a population (:func:`share_normalization`) the members' wrappers share one store,
and :func:`step_vector_envs` steps every member's env, then normalizes all of them with one set
of numpy ops: gymnasium's wrappers cost a MuJoCo member about as much as the simulator itself,
in per-call overhead of a few numpy ops on 17 numbers, paid once per member per step. The
statistics themselves are gymnasium's ``update_mean_var_count_from_moments`` (Chan et al.'s
parallel update), called on the rows together.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers.utils import update_mean_var_count_from_moments

from ppo_lab.io.checkpoint import torch_from_numpy

#: gymnasium's ``RunningMeanStd`` starting count, and the epsilon under the square root of its
#: ``NormalizeObservation`` / ``NormalizeReward``.
COUNT_EPSILON = 1e-4
EPSILON = 1e-8

Rows = Union[slice, np.ndarray]


class RunningStats:
    """Running mean, variance and count of ``R`` independent streams of samples of shape
    ``shape``: gymnasium's ``RunningMeanStd`` row by row, in one set of numpy ops for all rows.

    Attributes:
        mean: ``(R, *shape)``, dtype ``dtype`` until an update promotes it (as gymnasium's: float32
            statistics of float64 observations become float64 at the first update).
        var: ``(R, *shape)``, same dtype.
        count: ``(R,)`` float64 samples seen, from ``COUNT_EPSILON``.
    """

    def __init__(self, rows: int, shape: tuple[int, ...] = (), dtype: Any = np.float64) -> None:
        self.mean = np.zeros((rows, *shape), dtype=dtype)
        self.var = np.ones((rows, *shape), dtype=dtype)
        self.count = np.full(rows, COUNT_EPSILON)

    def update(self, rows: Rows, x: np.ndarray) -> None:
        """Add a batch of ``B`` samples to each of the selected rows.

        Args:
            rows: the rows (a slice, or an int index array of ``R'`` rows).
            x: ``(R', B, *shape)``; row ``r``'s samples are ``x[r]`` (``RunningMeanStd.update(x[r])``).
        """
        batch_mean, batch_var = np.mean(x, axis=1), np.var(x, axis=1)
        counts = self.count[rows]
        # The count enters as a Python float, as in RunningMeanStd: it must not promote float32
        # statistics. Rows with equal counts (members stepping in lockstep) go together.
        if np.all(counts == counts[0]):
            self._assign(rows, *update_mean_var_count_from_moments(
                self.mean[rows], self.var[rows], float(counts[0]), batch_mean, batch_var, x.shape[1]))
            return
        index = np.arange(len(self.count))[rows]
        for k, row in enumerate(index):
            self._assign(np.array([row]), *update_mean_var_count_from_moments(
                self.mean[row:row + 1], self.var[row:row + 1], float(counts[k]), batch_mean[k:k + 1],
                batch_var[k:k + 1], x.shape[1]))

    def _assign(self, rows: Rows, mean: np.ndarray, var: np.ndarray, count: Any) -> None:
        """Write rows, promoting the arrays to the result's dtype (never demoting)."""
        for name, value in (("mean", mean), ("var", var)):
            current = getattr(self, name)
            dtype = np.result_type(current.dtype, np.asarray(value).dtype)
            if dtype != current.dtype:
                current = current.astype(dtype)
                setattr(self, name, current)
            current[rows] = value
        self.count[rows] = count

    def get(self, row: int) -> dict[str, Any]:
        """Row ``row`` as gymnasium's wrappers hold it, in float64 (a copy)."""
        return {"mean": np.array(self.mean[row], dtype=np.float64), "var": np.array(self.var[row], dtype=np.float64),
                "count": float(self.count[row])}

    def set(self, row: int, stats: dict[str, Any]) -> None:
        """Load row ``row`` from :meth:`get`'s layout (float64: the row's arrays become float64)."""
        self._assign(slice(row, row + 1), np.asarray(stats["mean"], dtype=np.float64)[None],
                     np.asarray(stats["var"], dtype=np.float64)[None], float(stats["count"]))


class NormalizationStore:
    """The normalization state of ``R`` vector envs of ``N`` envs each, one row per env (module
    docstring).

    Attributes:
        obs: observation statistics (:class:`RunningStats`, per-row shape the observation's,
            float32 until the first update as gymnasium's), or None.
        ret: statistics of the discounted return (shape ``()``, float64), or None.
        accumulated: ``(R, N)`` float32 discounted return so far of each env's episode.
        prev_dones: ``(R, N)`` float32, 1 where the env's last step ended an episode (its next
            step is the autoreset step, which updates nothing).
        gamma: ``(R, 1)`` float32 discount of each row's return (gymnasium multiplies the float32
            return by the Python float ``gamma``, which rounds it to float32 first).
    """

    def __init__(self, rows: int, num_envs: int, obs_shape: Optional[tuple[int, ...]], normalize_reward: bool,
                 gamma: Union[float, Sequence[float]] = 0.99) -> None:
        self.rows = rows
        self.obs = None if obs_shape is None else RunningStats(rows, obs_shape, np.float32)
        self.ret = RunningStats(rows) if normalize_reward else None
        self.accumulated = np.zeros((rows, num_envs), dtype=np.float32)
        self.prev_dones = np.zeros((rows, num_envs), dtype=np.float32)
        self.gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float32), (rows,)).reshape(rows, 1).copy()


class _Slot:
    """A wrapper's place in a store. Not a plain value, so env-state snapshots
    (``envs/env_state.py``) leave it alone: a snapshot of a solo run loads into a population member."""

    def __init__(self, store: NormalizationStore, row: int) -> None:
        self.store, self.row = store, row


class NormalizeVector(gym.vector.VectorWrapper):
    """Normalize observations (running mean/var, then clip to ``[-clip_obs, clip_obs]``) and scale
    rewards by the running std of the discounted return (then clip to ``[-clip_reward,
    clip_reward]``): gymnasium's vector ``NormalizeObservation`` + ``TransformObservation`` and
    ``NormalizeReward`` + ``TransformReward`` (37 details, continuous details 6-9), with the same
    values and dtypes, the statistics in a row of a :class:`NormalizationStore`.

    Args:
        env: a vector env with next-step autoreset.
        normalize_obs / clip_obs: observation normalization (a ``Box`` observation space) and its bound.
        normalize_reward / clip_reward: reward scaling and its bound.
        gamma: discount of the return whose running std scales rewards.
        epsilon: under the square roots (gymnasium's default).

    Attributes:
        update_running_mean: False freezes the statistics (evaluation), as gymnasium's wrappers.
        accumulated_reward, _prev_dones: views of this env's row of the store (gymnasium's names),
            so an env-state snapshot holds them.

    Raises:
        ValueError: the env's autoreset mode is not next-step, or ``normalize_obs`` on a
            non-``Box`` observation space.
    """

    def __init__(self, env: gym.vector.VectorEnv, normalize_obs: bool = False, clip_obs: float = 10.0,
                 normalize_reward: bool = False, clip_reward: float = 10.0, gamma: float = 0.99,
                 epsilon: float = EPSILON) -> None:
        super().__init__(env)
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.NEXT_STEP:
            raise ValueError(f"NormalizeVector needs next-step autoreset; the env's autoreset_mode is {mode}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma should be in [0, 1]; got {gamma}")
        if epsilon <= 0:
            raise ValueError(f"epsilon should be > 0; got {epsilon}")
        obs_shape = None
        if normalize_obs:
            space = env.single_observation_space
            if not isinstance(space, gym.spaces.Box):
                raise ValueError(f"observation normalization needs a Box observation space; got {space}")
            obs_shape = space.shape
            self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, space.shape, np.float32)
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.normalize_obs, self.normalize_reward = normalize_obs, normalize_reward
        self.clip_obs, self.clip_reward = float(clip_obs), float(clip_reward)
        self.gamma, self.epsilon = float(gamma), float(epsilon)
        self.update_running_mean = True
        self.attach(NormalizationStore(1, self.num_envs, obs_shape, normalize_reward, gamma), 0)

    def attach(self, store: NormalizationStore, row: int) -> None:
        """Keep this env's state in row ``row`` of ``store`` (:func:`share_normalization`)."""
        self._slot = _Slot(store, row)
        self.accumulated_reward = store.accumulated[row]
        self._prev_dones = store.prev_dones[row]

    @property
    def store(self) -> NormalizationStore:
        return self._slot.store

    @property
    def row(self) -> int:
        return self._slot.row

    def reset(self, *, seed: Any = None, options: Optional[dict[str, Any]] = None) -> tuple[Any, dict[str, Any]]:
        """Reset every env; the return so far restarts at 0 and the first observations update the
        statistics (gymnasium's behaviour).

        Raises:
            ValueError: a partial reset (``options["reset_mask"]`` not all True).
        """
        if options is not None and "reset_mask" in options and not np.all(options["reset_mask"]):
            raise ValueError("NormalizeVector does not support partial resets; reset_mask must be all True")
        obs, info = self.env.reset(seed=seed, options=options)
        self.accumulated_reward[:] = 0
        self._prev_dones[:] = 0
        if self.normalize_obs:
            rows = slice(self.row, self.row + 1)
            obs = _normalized_obs(self.store, rows, np.asarray(obs)[None], self.update_running_mean,
                                  self.epsilon, self.clip_obs)[0]
        return obs, info

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step the env and normalize what it returns (:func:`step_vector_envs` for one env)."""
        (result,) = step_vector_envs([self], [actions])
        if isinstance(result, BaseException):
            raise result
        return result


def _normalized_obs(store: NormalizationStore, rows: Rows, obs: np.ndarray, update: bool, epsilon: float,
                    bound: float) -> np.ndarray:
    """``(R', N, *shape)`` observations of the selected rows, normalized and clipped (float32)."""
    stats = store.obs
    if update:
        stats.update(rows, obs)
    expand = (slice(None), None)  # the rows' statistics broadcast over their N envs
    normalized = ((obs - stats.mean[rows][expand]) / np.sqrt(stats.var[rows][expand] + epsilon)).astype(np.float32)
    return np.clip(normalized, -bound, bound)


def _scaled_rewards(store: NormalizationStore, rows: Rows, reward: np.ndarray, terminated: np.ndarray,
                    truncated: np.ndarray, update: bool, epsilon: float, bound: float) -> np.ndarray:
    """``(R', N)`` rewards of the selected rows scaled by the running std of their discounted
    return, and clipped; updates the returns and their statistics (gymnasium's ``NormalizeReward``
    with next-step autoreset: the autoreset step after a done changes nothing)."""
    accumulated, prev_dones = store.accumulated[rows], store.prev_dones[rows]
    active = ~prev_dones.astype(bool)
    discounted = accumulated * store.gamma[rows] * (1 - terminated) + reward
    accumulated = np.where(active, discounted, accumulated).astype(np.float32)
    store.accumulated[rows] = accumulated
    if update:
        full = active.all(axis=1)
        if full.all():
            store.ret.update(rows, accumulated)
        else:
            index = np.arange(store.rows)[rows]
            if full.any():
                store.ret.update(index[full], accumulated[full])
            for k in np.flatnonzero(~full & active.any(axis=1)):  # part of the row's envs: its own batch
                store.ret.update(index[k:k + 1], accumulated[k][active[k]][None])
    store.prev_dones[rows] = np.logical_or(terminated, truncated)
    scaled = reward / np.sqrt(store.ret.var[rows][:, None] + epsilon)
    return np.clip(scaled, -bound, bound)


StepResult = tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


def step_vector_envs(envs: Sequence[gym.vector.VectorEnv], actions: Sequence[Any]) -> list[Union[StepResult, BaseException]]:
    """Step each vector env with its actions; the :class:`NormalizeVector` ones that share a
    store (and agree on freezing) are normalized together, in one set of numpy ops.

    Returns:
        Per env, ``envs[i].step(actions[i])``'s result, or the exception its step raised (an env
        error ends that env's member alone).
    """
    results: list[Union[StepResult, BaseException]] = []
    for env, action in zip(envs, actions):
        try:
            results.append((env.env if isinstance(env, NormalizeVector) else env).step(action))
        except Exception as exc:  # noqa: BLE001 - returned to the caller, per env
            results.append(exc)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, env in enumerate(envs):
        if isinstance(env, NormalizeVector) and not isinstance(results[i], BaseException):
            groups.setdefault((id(env.store), env.update_running_mean), []).append(i)
    for members in groups.values():
        try:
            normalized = _normalize_group([envs[i] for i in members], [results[i] for i in members])
        except Exception as exc:  # noqa: BLE001 - returned to the caller, per env
            normalized = [exc] * len(members)
        for i, out in zip(members, normalized):
            results[i] = out
    return results


def _normalize_group(wrappers: Sequence[NormalizeVector], results: Sequence[StepResult]) -> list[StepResult]:
    """Normalize the step results of wrappers that share one store (rows in any order)."""
    first, store = wrappers[0], wrappers[0].store
    order = [w.row for w in wrappers]
    rows: Rows = slice(None) if order == list(range(store.rows)) else np.array(order)

    def stacked(k: int) -> np.ndarray:
        return np.asarray(results[0][k])[None] if len(results) == 1 else np.stack([r[k] for r in results])

    obs: Any = [r[0] for r in results]
    rewards: Any = [r[1] for r in results]
    if first.normalize_obs:
        obs = _normalized_obs(store, rows, stacked(0), first.update_running_mean, first.epsilon, first.clip_obs)
    if first.normalize_reward:
        rewards = _scaled_rewards(store, rows, stacked(1), stacked(2), stacked(3), first.update_running_mean,
                                  first.epsilon, first.clip_reward)
    return [(obs[k], rewards[k], r[2], r[3], r[4]) for k, r in enumerate(results)]


def _settings(wrapper: NormalizeVector) -> tuple[Any, ...]:
    store = wrapper.store
    return (wrapper.normalize_obs, wrapper.normalize_reward, wrapper.clip_obs, wrapper.clip_reward, wrapper.epsilon,
            wrapper.num_envs, wrapper.update_running_mean,
            None if store.obs is None else (store.obs.mean.shape[1:], store.obs.mean.dtype))


def share_normalization(envs: Sequence[gym.vector.VectorEnv]) -> Optional[NormalizationStore]:
    """Move the normalization state of a population's vector envs into one store, row ``m`` for
    env ``m`` (its current statistics, returns and gamma copied), so :func:`step_vector_envs`
    normalizes them together. Nothing changes where they cannot share (returns None): an env
    without :class:`NormalizeVector` outermost, or settings, shapes or statistic dtypes that differ.
    """
    wrappers = list(envs)
    if len(wrappers) < 2 or not all(isinstance(w, NormalizeVector) for w in wrappers):
        return None
    if len({_settings(w) for w in wrappers}) > 1:
        return None
    first = wrappers[0]
    obs_shape = None if first.store.obs is None else first.store.obs.mean.shape[1:]
    store = NormalizationStore(len(wrappers), first.num_envs, obs_shape, first.normalize_reward,
                               [w.gamma for w in wrappers])
    for row, w in enumerate(wrappers):
        old, old_row = w.store, w.row
        for name in ("obs", "ret"):
            src, dst = getattr(old, name), getattr(store, name)
            if src is not None:
                dst._assign(slice(row, row + 1), src.mean[old_row:old_row + 1], src.var[old_row:old_row + 1],
                            src.count[old_row])
        store.accumulated[row] = old.accumulated[old_row]
        store.prev_dones[row] = old.prev_dones[old_row]
        w.attach(store, row)
    return store


# --------------------------------------------------------------------------- state, checkpoints
def _find_wrapper(envs: gym.vector.VectorEnv, kind: type) -> Any:
    env: Any = envs
    while isinstance(env, gym.vector.VectorWrapper):
        if isinstance(env, kind):
            return env
        env = env.env
    return None


def normalization_state(envs: gym.vector.VectorEnv) -> dict[str, dict[str, Any]]:
    """Running statistics of observation and reward normalization, as plain arrays/floats
    (``{"obs": {"mean", "var", "count"}, "reward": {...}}``, float64; absent keys: not normalized)."""
    wrapper = _find_wrapper(envs, NormalizeVector)
    if wrapper is None:
        return {}
    state: dict[str, dict[str, Any]] = {}
    for key, stats in (("obs", wrapper.store.obs), ("reward", wrapper.store.ret)):
        if stats is not None:
            state[key] = stats.get(wrapper.row)
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
    """Copy saved statistics into the env's normalization; ``freeze`` stops updating them
    (evaluation). Loaded statistics are float64, as gymnasium's wrappers held them after a load.

    Raises:
        ValueError: the saved statistics and the env's normalization do not match.
    """
    wrapper = _find_wrapper(envs, NormalizeVector)
    for key, attr in (("obs", "obs"), ("reward", "ret")):
        stats = None if wrapper is None else getattr(wrapper.store, attr)
        if (stats is None) != (key not in state):
            raise ValueError(
                f"normalization state mismatch for {key!r}: saved={key in state}, "
                f"env normalizes={stats is not None}"
            )
        if stats is not None:
            stats.set(wrapper.row, state[key])
    if wrapper is not None and freeze:
        wrapper.update_running_mean = False


class NormalizationStats:
    """The normalization statistics of a vector env as a checkpoint component.

    ``state_dict()`` gives ``{"obs": {"mean", "var", "count"}, "reward": {...}}`` with the arrays
    as float64 tensors (it loads with ``weights_only=True``); absent keys: not normalized.
    """

    def __init__(self, envs: gym.vector.VectorEnv) -> None:
        self.envs = envs

    def numpy(self) -> dict[str, dict[str, Any]]:
        """The current statistics as numpy arrays (a copy)."""
        return normalization_state(self.envs)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return normalization_to_tensors(normalization_state(self.envs))

    def load_state_dict(self, state: dict[str, dict[str, Any]], freeze: bool = False) -> None:
        """Restore :meth:`state_dict`; ``freeze`` stops updating the statistics (evaluation).

        Raises:
            ValueError: the saved statistics and the env's normalization do not match.
        """
        load_normalization_state(self.envs, normalization_from_tensors(state), freeze=freeze)
