"""Rollout buffer and collection over a gymnasium vector env with next-step autoreset.

With gymnasium 1.x's default autoreset, the step that ends an episode returns the true final
observation; the *next* ``step`` call resets that env (its action is ignored, reward 0). So:

* the value computed at step t + 1 from the stored observation is V(true final observation),
  exactly the bootstrap value a *truncated* episode needs (``advantages.compute_gae``);
* the reset step itself is not a transition of any episode: it is stored with ``valid = False``
  and left out of the loss.

Storage is preallocated once; pixel observations stay uint8 (Atari detail 9 keeps scaling in the
network). Dict observations are stored as a dict of arrays, one per entry, through the helpers of
``policies/observations.py`` (which the Box path goes through at the cost of one type check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

import torch
from torch import Tensor

from ppo_lab.envs import completed_episodes
from ppo_lab.io.checkpoint import torch_from_numpy
from ppo_lab.policies.distributions import action_rng
from ppo_lab.policies.observations import (
    ObsTree, allocate_obs, flatten_obs, index_obs, map_obs, split_obs, write_obs,
)


@dataclass
class RolloutBuffer:
    """One rollout of ``T = num_steps`` vector steps over ``N = num_envs`` envs, as numpy arrays
    (the env and the rollout policy speak numpy; the update converts once per rollout).

    Attributes:
        obs: ``(T, N, *obs_shape)`` observation each action was taken in: uint8 for pixels,
            int64 for Discrete / MultiDiscrete spaces, float32 otherwise (``encoders.buffer_dtype``);
            for a Dict space ``{key: (T, N, *entry_shape)}``, each entry with its own dtype.
        actions: ``(T, N)`` int64, ``(T, N, k)`` int64 (MultiDiscrete) or ``(T, N, d)`` float32
            (the unclipped sampled actions).
        logprobs: ``(T, N)`` float32 log pi_old(a|s).
        values: ``(T, N)`` float32 V_old(s).
        rewards: ``(T, N)`` float32, as the (possibly normalized) env returned them.
        terminated: ``(T, N)`` bool.
        truncated: ``(T, N)`` bool.
        valid: ``(T, N)`` bool; False for autoreset steps.
        next_value: ``(N,)`` float32 V of the observation after the last step.
    """

    obs: ObsTree
    actions: np.ndarray
    logprobs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    next_value: np.ndarray

    @classmethod
    def allocate(cls, num_steps: int, envs: gym.vector.VectorEnv) -> "RolloutBuffer":
        """Preallocate storage for ``num_steps`` steps of ``envs``."""
        n = envs.num_envs
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        if isinstance(act_space, gym.spaces.Box):
            actions = np.zeros((num_steps, n, *act_space.shape), dtype=np.float32)
        elif isinstance(act_space, gym.spaces.MultiDiscrete):
            actions = np.zeros((num_steps, n, *act_space.shape), dtype=np.int64)
        else:
            actions = np.zeros((num_steps, n), dtype=np.int64)
        shape = (num_steps, n)
        return cls(
            obs=allocate_obs(obs_space, (num_steps, n)),
            actions=actions,
            logprobs=np.zeros(shape, dtype=np.float32),
            values=np.zeros(shape, dtype=np.float32),
            rewards=np.zeros(shape, dtype=np.float32),
            terminated=np.zeros(shape, dtype=bool),
            truncated=np.zeros(shape, dtype=bool),
            valid=np.ones(shape, dtype=bool),
            next_value=np.zeros(n, dtype=np.float32),
        )

    def next_values(self) -> np.ndarray:
        """``(T, N)`` V of the observation each step reached: ``values[t + 1]``, and ``next_value``
        for the last step (with next-step autoreset, the true final observation's value)."""
        return np.concatenate([self.values[1:], self.next_value[None]])

    def training_batch(self, advantages: np.ndarray, returns: np.ndarray, device: torch.device) -> "TrainingBatch":
        """The rollout flattened to ``(T * N, ...)`` tensors on ``device`` (once per update), with
        the GAE ``advantages`` and ``returns`` ``(T, N)`` and the indices of the valid steps."""

        def flat(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array.reshape(-1, *array.shape[2:])).to(device)

        return TrainingBatch(
            obs=map_obs(lambda a: torch.from_numpy(a).to(device), flatten_obs(self.obs)), actions=flat(self.actions), logprobs=flat(self.logprobs),
            values=flat(self.values), advantages=flat(advantages), returns=flat(returns),
            valid=torch.from_numpy(np.flatnonzero(self.valid.reshape(-1))).to(device),
        )


@dataclass
class Minibatch:
    """One minibatch of ``M`` valid steps: ``obs`` ``(M, *obs_shape)`` (Dict observations:
    ``{key: (M, *entry_shape)}``), ``actions`` ``(M, ...)``, ``logprobs``, ``advantages``,
    ``values``, ``returns`` ``(M,)`` (the old policy's values)."""

    obs: ObsTree
    actions: Tensor
    logprobs: Tensor
    advantages: Tensor
    values: Tensor
    returns: Tensor


@dataclass
class TrainingBatch:
    """A rollout as flat tensors for the update epochs (``RolloutBuffer.training_batch``).

    Attributes:
        obs, actions, logprobs, values, advantages, returns: ``(T * N, ...)``, step-major
            (Dict observations: ``{key: (T * N, *entry_shape)}``).
        valid: ``(V,)`` int64 indices of the valid (non-autoreset) steps.
    """

    obs: ObsTree
    actions: Tensor
    logprobs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    valid: Tensor

    def minibatches(self, num_minibatches: int) -> list[Minibatch]:
        """One epoch: the valid steps in a fresh random order (torch's global generator, on the
        batch's device), split into ``num_minibatches`` minibatches as even as possible (37
        details, detail 6); empty ones are left out. Each sample appears exactly once.

        One gather per tensor per epoch; the minibatches are then contiguous views.
        """
        valid = self.valid
        perm = valid[torch.randperm(valid.numel(), device=valid.device)]
        shuffled = [split_obs(index_obs(self.obs, perm), num_minibatches)]
        shuffled += [t[perm].tensor_split(num_minibatches)
                     for t in (self.actions, self.logprobs, self.advantages, self.values, self.returns)]
        return [Minibatch(*parts) for parts in zip(*shuffled) if parts[3].numel() > 0]


class RolloutCollector:
    """Steps the vector env with the current policy and fills a :class:`RolloutBuffer`.

    Args:
        envs: the vector env (next-step autoreset).
        num_steps: vector steps per rollout.
        seed: seed of the first ``envs.reset`` (env i gets ``seed + i``) and of the generator
            the actions are sampled from.
    """

    def __init__(self, envs: gym.vector.VectorEnv, num_steps: int, seed: int) -> None:
        self.envs = envs
        self.buffer = RolloutBuffer.allocate(num_steps, envs)
        self.reset(seed)
        #: Seconds spent inside ``envs.step`` (cumulative), for the time breakdown.
        self.env_seconds = 0.0

    def reset(self, seed: int) -> None:
        """Reset every env (env i with ``seed + i``), re-seed the action sampler, start new episodes."""
        self.next_obs, _ = self.envs.reset(seed=seed)
        self.envs.action_space.seed(seed)
        self.rng = action_rng(seed)
        self.prev_done = np.zeros(self.envs.num_envs, dtype=bool)

    def state_dict(self) -> dict[str, Any]:
        """The observation to act on next, which envs are due for an autoreset step, and the
        action sampler's generator state (plain ints: it loads with ``weights_only=True``)."""
        return {
            "next_obs": map_obs(lambda a: torch_from_numpy(np.asarray(a)), self.next_obs),
            "prev_done": torch_from_numpy(self.prev_done),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the env itself must be restored to match)."""
        self.next_obs = map_obs(lambda t: t.numpy().copy(), state["next_obs"])
        self.prev_done = state["prev_done"].numpy().copy()
        if "rng" in state:  # checkpoints from before the numpy sampler keep the run-seeded generator
            self.rng.bit_generator.state = state["rng"]

    def collect(self, network: Any) -> tuple[RolloutBuffer, list[tuple[float, int]]]:
        """Run ``num_steps`` vector steps with ``network.inference_policy()`` (protocol:
        ``policies/protocol.py``).

        Returns:
            The filled buffer (reused between calls) and the ``(episodic_return, episodic_length)``
            of every episode that ended during the rollout.
        """
        buf, episodes = self.buffer, []
        policy = network.inference_policy()  # fused numpy snapshot of this rollout's weights (MLP)
        for t in range(len(buf.logprobs)):
            write_obs(buf.obs, t, self.next_obs)
            action, buf.logprobs[t], buf.values[t] = policy.act(index_obs(buf.obs, t), self.rng)
            buf.actions[t] = action
            buf.valid[t] = ~self.prev_done
            tic = time.perf_counter()
            self.next_obs, reward, terminated, truncated, infos = self.envs.step(action)
            self.env_seconds += time.perf_counter() - tic
            buf.rewards[t] = reward
            buf.terminated[t] = terminated
            buf.truncated[t] = truncated
            self.prev_done = terminated | truncated
            if infos:
                episodes += [(ret, length) for _, ret, length in completed_episodes(infos)]
        buf.next_value[:] = policy.value(self.next_obs)
        return buf, episodes
