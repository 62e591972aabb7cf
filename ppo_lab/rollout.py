"""Rollout buffer and collection over a gymnasium vector env with next-step autoreset.

With gymnasium 1.x's default autoreset, the step that ends an episode returns the true final
observation; the *next* ``step`` call resets that env (its action is ignored, reward 0). So:

* the value computed at step t + 1 from the stored observation is V(true final observation),
  exactly the bootstrap value a *truncated* episode needs (``advantages.compute_gae``);
* the reset step itself is not a transition of any episode: it is stored with ``valid = False``
  and left out of the loss.

Storage is preallocated once; pixel observations stay uint8 (Atari detail 9 keeps scaling in the
network).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from ppo_lab.checkpoint import torch_from_numpy
from ppo_lab.envs import completed_episodes
from ppo_lab.networks import ActorCritic


@dataclass
class RolloutBuffer:
    """One rollout of ``T = num_steps`` vector steps over ``N = num_envs`` envs.

    Attributes:
        obs: ``(T, N, *obs_shape)`` observation each action was taken in (uint8 for pixels).
        actions: ``(T, N)`` int64, ``(T, N, k)`` int64 (MultiDiscrete) or ``(T, N, d)`` float32
            (the unclipped sampled actions).
        logprobs: ``(T, N)`` log pi_old(a|s).
        values: ``(T, N)`` V_old(s).
        rewards: ``(T, N)`` float32 numpy, as the (possibly normalized) env returned them.
        terminated: ``(T, N)`` bool numpy.
        truncated: ``(T, N)`` bool numpy.
        valid: ``(T, N)`` bool numpy; False for autoreset steps.
        next_value: ``(N,)`` V of the observation after the last step.
    """

    obs: Tensor
    actions: Tensor
    logprobs: Tensor
    values: Tensor
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    next_value: Tensor

    @classmethod
    def allocate(
        cls, num_steps: int, envs: gym.vector.VectorEnv, device: torch.device
    ) -> "RolloutBuffer":
        """Preallocate storage for ``num_steps`` steps of ``envs``."""
        n = envs.num_envs
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        if isinstance(act_space, gym.spaces.Box):
            actions = torch.zeros((num_steps, n, *act_space.shape), dtype=torch.float32, device=device)
        elif isinstance(act_space, gym.spaces.MultiDiscrete):
            actions = torch.zeros((num_steps, n, *act_space.shape), dtype=torch.long, device=device)
        else:
            actions = torch.zeros((num_steps, n), dtype=torch.long, device=device)
        shape = (num_steps, n)
        return cls(
            obs=torch.zeros((num_steps, n, *obs_space.shape), dtype=obs_dtype, device=device),
            actions=actions,
            logprobs=torch.zeros(shape, device=device),
            values=torch.zeros(shape, device=device),
            rewards=np.zeros(shape, dtype=np.float32),
            terminated=np.zeros(shape, dtype=bool),
            truncated=np.zeros(shape, dtype=bool),
            valid=np.ones(shape, dtype=bool),
            next_value=torch.zeros(n, device=device),
        )

    def next_values(self) -> np.ndarray:
        """``(T, N)`` V of the observation each step reached: ``values[t + 1]``, and ``next_value``
        for the last step (with next-step autoreset, the true final observation's value)."""
        values = torch.cat([self.values[1:], self.next_value.unsqueeze(0)])
        return values.cpu().numpy()


def obs_to_tensor(obs: np.ndarray, device: torch.device | str) -> Tensor:
    """A batch of env observations as the network's input: uint8 pixels stay uint8, anything
    else becomes float32 (MuJoCo v5 returns float64)."""
    obs = np.asarray(obs)
    dtype = torch.uint8 if obs.dtype == np.uint8 else torch.float32
    return torch.as_tensor(obs, dtype=dtype, device=device)


class RolloutCollector:
    """Steps the vector env with the current policy and fills a :class:`RolloutBuffer`.

    Args:
        envs: the vector env (next-step autoreset).
        num_steps: vector steps per rollout.
        device: where the network lives.
        seed: seed of the first ``envs.reset`` (env i gets ``seed + i``).
    """

    def __init__(
        self, envs: gym.vector.VectorEnv, num_steps: int, device: torch.device, seed: int
    ) -> None:
        self.envs = envs
        self.device = device
        self.buffer = RolloutBuffer.allocate(num_steps, envs, device)
        self.reset(seed)
        #: Seconds spent inside ``envs.step`` (cumulative), for the time breakdown.
        self.env_seconds = 0.0

    def reset(self, seed: int) -> None:
        """Reset every env (env i with ``seed + i``) and start new episodes."""
        self.next_obs, _ = self.envs.reset(seed=seed)
        self.envs.action_space.seed(seed)
        self.prev_done = np.zeros(self.envs.num_envs, dtype=bool)

    def state_dict(self) -> dict[str, Tensor]:
        """The observation to act on next and which envs are due for an autoreset step."""
        return {
            "next_obs": torch_from_numpy(np.asarray(self.next_obs)),
            "prev_done": torch_from_numpy(self.prev_done),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Continue from :meth:`state_dict` (the env itself must be restored to match)."""
        self.next_obs = state["next_obs"].numpy().copy()
        self.prev_done = state["prev_done"].numpy().copy()

    @torch.inference_mode()
    def collect(self, network: ActorCritic) -> tuple[RolloutBuffer, list[tuple[float, int]]]:
        """Run ``num_steps`` vector steps.

        Returns:
            The filled buffer (reused between calls) and the ``(episodic_return, episodic_length)``
            of every episode that ended during the rollout.
        """
        buf, episodes = self.buffer, []
        policy = network.inference_policy()  # fused actor+critic snapshot of this rollout's weights
        # Per-step outputs are gathered in lists and stacked once per rollout: one indexed tensor
        # write costs about as much as the whole policy forward of a classic-control step.
        actions, logprobs, values = [], [], []
        for t in range(buf.obs.shape[0]):
            obs = buf.obs[t]
            obs.copy_(torch.from_numpy(np.asarray(self.next_obs)))
            action, logprob, value = policy.act(obs)
            actions.append(action)
            logprobs.append(logprob)
            values.append(value)
            buf.valid[t] = ~self.prev_done
            tic = time.perf_counter()
            self.next_obs, reward, terminated, truncated, infos = self.envs.step(action.cpu().numpy())
            self.env_seconds += time.perf_counter() - tic
            buf.rewards[t] = reward
            buf.terminated[t] = terminated
            buf.truncated[t] = truncated
            self.prev_done = terminated | truncated
            if infos:
                episodes += [(ret, length) for _, ret, length in completed_episodes(infos)]
        buf.actions.copy_(torch.stack(actions))  # copy_, not out=: a shape mismatch must raise
        buf.logprobs.copy_(torch.stack(logprobs))
        buf.values.copy_(torch.stack(values))
        buf.next_value.copy_(policy.value(obs_to_tensor(self.next_obs, self.device)))
        return buf, episodes
