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
from typing import Any, Optional, Sequence, Union

import gymnasium as gym
import numpy as np

import torch
from torch import Tensor

from ppo_lab.config import ActionMasking
from ppo_lab.envs import completed_episodes, first_action_mask, read_action_mask
from ppo_lab.envs.normalization import step_vector_envs
from ppo_lab.io.checkpoint import torch_from_numpy
from ppo_lab.policies.distributions import action_rng
from ppo_lab.policies.inference import StackedMLPPolicy
from ppo_lab.policies.protocol import is_recurrent
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
        actions: ``(T, N)`` int64, ``(T, N, k)`` int64 (MultiDiscrete), ``(T, N, n)`` int64 bits
            (MultiBinary) or ``(T, N, d)`` float32 (the unclipped sampled actions).
        logprobs: ``(T, N)`` float32 log pi_old(a|s).
        values: ``(T, N)`` float32 V_old(s).
        rewards: ``(T, N)`` float32, as the (possibly normalized) env returned them.
        terminated: ``(T, N)`` bool.
        truncated: ``(T, N)`` bool.
        valid: ``(T, N)`` bool; False for autoreset steps.
        next_value: ``(N,)`` float32 V of the observation after the last step.
        episode_starts: ``(T, N)`` bool, True where ``obs`` is an episode's first observation
            (the step after an autoreset step, and the first step after ``envs.reset``).
        initial_state: ``(N, S)`` float32 the recurrent state before step 0 (recurrent policies;
            None otherwise): the loss replays each env's sequence from it.
        masks: ``(T, N, n)`` bool action mask valid in ``obs`` (True = valid; ``n`` is
            ``sum(nvec)`` for MultiDiscrete), or None when the run does not mask.
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
    episode_starts: np.ndarray
    initial_state: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None

    @classmethod
    def allocate(cls, num_steps: int, envs: gym.vector.VectorEnv) -> "RolloutBuffer":
        """Preallocate storage for ``num_steps`` steps of ``envs``."""
        n = envs.num_envs
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        if isinstance(act_space, gym.spaces.Box):
            actions = np.zeros((num_steps, n, *act_space.shape), dtype=np.float32)
        elif isinstance(act_space, (gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
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
            episode_starts=np.zeros(shape, dtype=bool),
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
            num_envs=self.valid.shape[1],
            valid_mask=torch.from_numpy(self.valid).to(device),
            episode_starts=torch.from_numpy(self.episode_starts).to(device),
            initial_state=None if self.initial_state is None else torch.from_numpy(self.initial_state).to(device),
            masks=None if self.masks is None else flat(self.masks),
        )


@dataclass
class Minibatch:
    """One minibatch of ``M`` valid steps: ``obs`` ``(M, *obs_shape)`` (Dict observations:
    ``{key: (M, *entry_shape)}``), ``actions`` ``(M, ...)``,
    ``logprobs``, ``advantages``, ``values``, ``returns`` ``(M,)`` (the old policy's values),
    ``masks`` ``(M, n)`` bool (None when the run does not mask).

    Sequence minibatches (recurrent policies) hold whole env sequences instead: ``obs`` and
    ``actions`` are ``(T * m, ...)`` time-major over ``m`` envs, ``state`` ``(m, S)`` is their state
    before step 0, ``episode_starts`` ``(T, m)``, and ``select`` ``(M,)`` int64 picks the ``M``
    valid steps out of the ``T * m`` the network replays (the other fields are those ``M``;
    ``masks`` are ``(T * m, n)``, as the network replays them).

    A population's minibatch (``training/population.py``) stacks its ``R`` members': every field
    gains a leading ``(R, ...)`` dim, and ``weights`` ``(R, M)`` float marks the samples (1) and
    the padding (0) of members whose minibatch is shorter than the longest.
    """

    obs: ObsTree
    actions: Tensor
    logprobs: Tensor
    advantages: Tensor
    values: Tensor
    returns: Tensor
    state: Optional[Tensor] = None
    episode_starts: Optional[Tensor] = None
    select: Optional[Tensor] = None
    masks: Optional[Tensor] = None
    weights: Optional[Tensor] = None


@dataclass
class TrainingBatch:
    """A rollout as flat tensors for the update epochs (``RolloutBuffer.training_batch``).

    Attributes:
        obs, actions, logprobs, values, advantages, returns: ``(T * N, ...)``, step-major
            (Dict observations: ``{key: (T * N, *entry_shape)}``).
        valid: ``(V,)`` int64 indices of the valid (non-autoreset) steps.
        num_envs: ``N``.
        valid_mask, episode_starts: ``(T, N)`` bool.
        initial_state: ``(N, S)`` the recurrent state before step 0, or None (feed-forward).
        masks: ``(T * N, n)`` bool action masks, or None when the run does not mask.
    """

    obs: ObsTree
    actions: Tensor
    logprobs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    valid: Tensor
    num_envs: int = 1
    valid_mask: Optional[Tensor] = None
    episode_starts: Optional[Tensor] = None
    initial_state: Optional[Tensor] = None
    masks: Optional[Tensor] = None

    def minibatch_indices(self, num_minibatches: int, generator: Optional[torch.Generator] = None) -> list[Tensor]:
        """One epoch's order: the valid steps' row indices in a fresh random order (``generator``,
        or torch's global one), split into ``num_minibatches`` parts as even as possible (37
        details, detail 6); empty parts are left out. Each valid step appears exactly once."""
        valid = self.valid
        perm = valid[torch.randperm(valid.numel(), device=valid.device, generator=generator)]
        return [part for part in perm.tensor_split(num_minibatches) if part.numel() > 0]

    def sequence_minibatches(self, num_minibatches: int, generator: Optional[torch.Generator] = None) -> list[Minibatch]:
        """One epoch for a recurrent policy: the envs in a fresh random order (``generator``, or
        torch's global one), split into ``num_minibatches`` groups as even as possible; each minibatch
        is its envs' whole sequences (CleanRL ``ppo_atari_lstm.py``: minibatches split envs),
        with their stored initial state and episode starts, and ``select`` naming the valid
        steps the loss uses (autoreset steps are replayed, never scored).

        Raises:
            ValueError: ``num_minibatches`` exceeds the number of envs (a minibatch would be empty).
        """
        n = self.num_envs
        if num_minibatches > n:
            raise ValueError(f"agent.num_minibatches={num_minibatches} exceeds agent.num_envs={n}: a recurrent "
                             "policy's minibatches split envs (whole sequences)")
        T = self.valid_mask.shape[0]
        device = self.valid_mask.device
        out = []
        for envs in torch.randperm(n, device=device, generator=generator).tensor_split(num_minibatches):
            # Time-major rows of these envs: t * N + env, ordered (t, env).
            rows = (torch.arange(T, device=device).unsqueeze(1) * n + envs.unsqueeze(0)).reshape(-1)
            select = torch.nonzero(self.valid_mask[:, envs].reshape(-1)).squeeze(-1)
            scored = rows[select]
            out.append(Minibatch(
                obs=index_obs(self.obs, rows), actions=self.actions[rows], logprobs=self.logprobs[scored],
                advantages=self.advantages[scored], values=self.values[scored], returns=self.returns[scored],
                state=self.initial_state[envs], episode_starts=self.episode_starts[:, envs], select=select,
                masks=None if self.masks is None else self.masks[rows],
            ))
        return out


class RolloutCollector:
    """Steps the vector env with the current policy and fills a :class:`RolloutBuffer`.

    Args:
        envs: the vector env (next-step autoreset).
        num_steps: vector steps per rollout.
        seed: seed of the first ``envs.reset`` (env i gets ``seed + i``) and of the generator
            the actions are sampled from.
        action_masking: ``agent.action_masking``, resolved at the first reset
            (``envs.first_action_mask``): when it masks, ``buffer.masks`` is allocated.

    Attributes:
        next_mask: the ``(N, n)`` mask valid in ``next_obs``; None when not masking.

    Raises:
        ConfigError: ``action_masking=on`` and the env gives no masks at the first reset.
    """

    def __init__(
        self, envs: gym.vector.VectorEnv, num_steps: int, seed: int,
        action_masking: ActionMasking = ActionMasking.off,
    ) -> None:
        self.envs = envs
        self.action_masking = action_masking
        self.buffer = RolloutBuffer.allocate(num_steps, envs)
        self.reset(seed)
        #: Seconds spent inside ``envs.step`` (cumulative), for the time breakdown.
        self.env_seconds = 0.0

    def reset(self, seed: int) -> None:
        """Reset every env (env i with ``seed + i``), re-seed the action sampler, start new episodes."""
        self.next_obs, info = self.envs.reset(seed=seed)
        spec = getattr(self.envs, "spec", None) or getattr(self.envs.unwrapped, "spec", None)
        self.next_mask = first_action_mask(self.action_masking, self.next_obs, info,
                                           self.envs.single_action_space, getattr(spec, "id", "the env"))
        if self.next_mask is not None and self.buffer.masks is None:
            self.buffer.masks = np.ones((*self.buffer.valid.shape, self.next_mask.shape[-1]), dtype=bool)
        self.envs.action_space.seed(seed)
        self.rng = action_rng(seed)
        self.prev_done = np.zeros(self.envs.num_envs, dtype=bool)
        self.episode_start = np.ones(self.envs.num_envs, dtype=bool)
        #: The recurrent policy's state after the last step (None: feed-forward, or fresh episodes).
        self.state: Optional[np.ndarray] = None

    @property
    def masking(self) -> bool:
        """The rollout acts with the envs' action masks and stores them in ``buffer.masks``."""
        return self.buffer.masks is not None

    def state_dict(self) -> dict[str, Any]:
        """The observation to act on next (and its action mask, when masking), which envs are due
        for an autoreset step, and the action sampler's generator state (plain ints: it loads
        with ``weights_only=True``)."""
        state = {
            "next_obs": map_obs(lambda a: torch_from_numpy(np.asarray(a)), self.next_obs),
            "prev_done": torch_from_numpy(self.prev_done),
            "episode_start": torch_from_numpy(self.episode_start),
            "rng": self.rng.bit_generator.state,
        }
        if self.state is not None:
            state["recurrent_state"] = torch_from_numpy(self.state)
        if self.next_mask is not None:
            state["next_mask"] = torch_from_numpy(self.next_mask)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the env itself must be restored to match)."""
        self.next_obs = map_obs(lambda t: t.numpy().copy(), state["next_obs"])
        self.prev_done = state["prev_done"].numpy().copy()
        if "episode_start" in state:
            self.episode_start = state["episode_start"].numpy().copy()
        self.state = state["recurrent_state"].numpy().copy() if "recurrent_state" in state else None
        if state.get("next_mask") is not None:
            self.next_mask = state["next_mask"].numpy().copy()
        if "rng" in state:  # checkpoints from before the numpy sampler keep the run-seeded generator
            self.rng.bit_generator.state = state["rng"]

    def collect(self, network: Any) -> tuple[RolloutBuffer, list[tuple[float, int]]]:
        """Run ``num_steps`` vector steps with ``network.inference_policy()`` (protocol:
        ``policies/protocol.py``): :func:`collect_rollouts` for one member.

        Returns:
            The filled buffer (reused between calls) and the ``(episodic_return, episodic_length)``
            of every episode that ended during the rollout.
        """
        (result,) = collect_rollouts([self], [network])
        if isinstance(result, BaseException):
            raise result
        return result

    # The phases of one rollout, called by ``collect_rollouts`` (which interleaves members).
    def _begin(self, policy: Any, network: Any) -> None:
        """Start a rollout with ``policy`` (a recurrent one continues this collector's state)."""
        self._policy, self._recurrent, self._episodes = policy, is_recurrent(network), []
        if self._recurrent:
            if self.state is None:
                policy.reset_state(self.envs.num_envs)
            else:
                policy.state = self.state
            self.buffer.initial_state = policy.state.copy()

    def _observe(self, t: int) -> tuple[ObsTree, Optional[np.ndarray]]:
        """Store step ``t``'s observation (and its action mask); return them as the policy reads them."""
        buf = self.buffer
        write_obs(buf.obs, t, self.next_obs)
        buf.episode_starts[t] = self.episode_start
        mask = None
        if buf.masks is not None:  # the mask valid in the observation the action is taken in
            buf.masks[t] = self.next_mask
            mask = buf.masks[t]
        return index_obs(buf.obs, t), mask

    def _act(self, obs: ObsTree, mask: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This collector's own policy acting on ``obs``: actions, log-probs, values."""
        # Keyword arguments only where needed: a user's feed-forward policy may take neither.
        kwargs: dict[str, Any] = {}
        if mask is not None:
            kwargs["mask"] = mask
        if self._recurrent:
            kwargs["episode_start"] = self.episode_start
        return self._policy.act(obs, self.rng, **kwargs)

    def _store_action(self, t: int, action: np.ndarray, logprob: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Store step ``t``'s action, log-prob and value; return the action to step the envs with."""
        buf = self.buffer
        buf.actions[t], buf.logprobs[t], buf.values[t] = action, logprob, value
        buf.valid[t] = ~self.prev_done
        # The step after an autoreset step reads the new episode's first observation.
        self.episode_start = self.prev_done
        return action

    def _store_step(self, t: int, stepped: tuple[Any, Any, Any, Any, dict]) -> None:
        """Store what step ``t`` of the envs returned (``envs.step``'s 5-tuple)."""
        buf = self.buffer
        self.next_obs, reward, terminated, truncated, infos = stepped
        if buf.masks is not None:  # autoreset steps' infos carry the new episode's mask
            self.next_mask = read_action_mask(self.next_obs, infos, buf.masks.shape[-1])
            if self.next_mask is None:
                raise RuntimeError(f"the env gave no action_mask at rollout step {t}; a masking run "
                                   "needs one in every step's info (or Dict observation)")
        buf.rewards[t] = reward
        buf.terminated[t] = terminated
        buf.truncated[t] = truncated
        self.prev_done = terminated | truncated
        if infos:
            self._episodes += [(ret, length) for _, ret, length in completed_episodes(infos)]

    def _finish(self, next_value: Optional[np.ndarray] = None) -> tuple[RolloutBuffer, list[tuple[float, int]]]:
        """Store the bootstrap value of the last observation (``next_value``, or this collector's
        policy's); return the buffer and the episodes that ended."""
        buf, policy = self.buffer, self._policy
        if next_value is not None:
            buf.next_value[:] = next_value
        elif self._recurrent:
            buf.next_value[:] = policy.value(self.next_obs, self.episode_start)
            self.state = policy.state
        else:
            buf.next_value[:] = policy.value(self.next_obs)
        self._policy = None  # the snapshot is this rollout's only
        return buf, self._episodes


RolloutResult = Union[tuple[RolloutBuffer, list[tuple[float, int]]], BaseException]


def collect_rollouts(collectors: Sequence[RolloutCollector], networks: Sequence[Any]) -> list[RolloutResult]:
    """One rollout for each of ``M`` members (collector ``m`` acting with ``networks[m]``), in
    lockstep: at every step each member stores its observation, then the members act, then all
    step their own envs (``envs.normalization.step_vector_envs``: members whose normalization
    is shared are normalized together).

    Acting is one batched forward for all members when their rollout policies stack (the
    project's MLPs: ``policies.inference.StackedMLPPolicy``), each member sampling from its own
    generator; otherwise each member acts with its own policy. Either way member ``m`` fills
    the buffer its solo rollout would (up to float32 rounding of the batched forward).

    Returns:
        Per member, :meth:`RolloutCollector.collect`'s result, or the exception that ended its
        rollout (an env or policy error: that member stops, the others finish theirs).
    """
    results: list[Optional[RolloutResult]] = [None] * len(collectors)
    policies = [network.inference_policy() for network in networks]
    live = []
    for i, (collector, policy, network) in enumerate(zip(collectors, policies, networks)):
        try:
            collector._begin(policy, network)
            live.append(i)
        except Exception as exc:  # noqa: BLE001 - a member's failure is its own result
            results[i] = exc
    stacked = None
    if len(collectors) > 1 and StackedMLPPolicy.refusal(policies) is None \
            and len({c.buffer.masks is None for c in collectors}) == 1:
        stacked, rngs = StackedMLPPolicy(policies), [c.rng for c in collectors]
    for t in range(len(collectors[0].buffer.logprobs)):
        if not live:
            break
        seen = [(i, collectors[i]._observe(t)) for i in live]
        acted: list[Any] = []
        if stacked is not None and len(live) == len(collectors):
            masks = None if seen[0][1][1] is None else np.stack([mask for _, (_, mask) in seen])
            acted = list(zip(*stacked.act(np.stack([obs for _, (obs, _) in seen]), rngs, mask=masks)))
        else:
            for i, (obs, mask) in seen:
                try:
                    acted.append(collectors[i]._act(obs, mask))
                except Exception as exc:  # noqa: BLE001 - a member's failure is its own result
                    acted.append(exc)
        stepping, actions = [], []
        for (i, _), out in zip(seen, acted):
            if not isinstance(out, BaseException):
                try:
                    actions.append(collectors[i]._store_action(t, *out))
                    stepping.append(i)
                    continue
                except Exception as exc:  # noqa: BLE001 - a member's failure is its own result
                    out = exc
            results[i] = out
            live.remove(i)
        # Every member's envs at once: their normalization runs as one batched op.
        tic = time.perf_counter()
        steps = step_vector_envs([collectors[i].envs for i in stepping], actions)
        share = (time.perf_counter() - tic) / max(len(stepping), 1)
        for i, out in zip(stepping, steps):
            collectors[i].env_seconds += share
            if not isinstance(out, BaseException):
                try:
                    collectors[i]._store_step(t, out)
                    continue
                except Exception as exc:  # noqa: BLE001 - a member's failure is its own result
                    out = exc
            results[i] = out
            live.remove(i)
    values: list[Optional[np.ndarray]] = [None] * len(collectors)
    if stacked is not None and len(live) == len(collectors):
        values = list(stacked.value(np.stack([c.next_obs for c in collectors])))
    for i in live:
        try:
            results[i] = collectors[i]._finish(values[i])
        except Exception as exc:  # noqa: BLE001 - a member's failure is its own result
            results[i] = exc
    return results  # type: ignore[return-value]
