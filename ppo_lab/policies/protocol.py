"""The protocol of an actor-critic network: what the trainer, the rollout and evaluation call.

This is the one place it is written down. A user's network (``network._target_=<module>.<Class>``)
meets it most simply by subclassing :class:`ActorCriticBase` and writing ``__init__`` and
``forward``; :func:`check_network` refuses one that does not, before training, naming what is
missing.

Constructor: ``Class(observation_space, action_space, action_type, log_std_init, **kwargs)``,
the spaces of one (not batched) env, ``action_type`` an :class:`~ppo_lab.config.ActionType`,
``log_std_init`` a float (continuous actions), and the node's other keys as ``kwargs``.

Attributes and methods (``B`` is the batch size; observations are the env's, as tensors: uint8
pixels stay uint8, everything else float32):

* ``forward(obs) -> (dist_params, value)``: ``obs`` ``(B, *obs_shape)``; ``dist_params``
  float ``(B, n)`` logits (``Discrete(n)``; for ``MultiDiscrete`` the components' logits side by
  side, ``sum(nvec)``; for ``MultiBinary(n)`` one logit per bit) or ``(B, d)`` means
  (``Box(d,)``); ``value`` float ``(B,)``.
* ``evaluate_actions(obs, actions, mask=None) -> (log_prob, entropy, value)``, each float
  ``(B,)``, for stored ``actions`` ``(B,)`` int64, ``(B, k)`` int64 (MultiDiscrete), ``(B, n)``
  int64 bits (MultiBinary) or ``(B, d)`` float32: the loss's inputs. ``mask`` ``(B, n)`` /
  ``(B, sum(nvec))`` bool (True = valid) when the run masks invalid actions
  (``agent.action_masking``), passed on to ``dist.log_prob_entropy``; the trainer passes it only
  when it has masks, so a network that never masks may keep ``evaluate_actions(obs, actions)``.
* ``inference_policy() -> InferencePolicy``: a numpy-in, numpy-out acting policy of the current
  weights (``policies/inference.py``), taken once per rollout and per evaluation.
* ``after_optimizer_step() -> None``: called after every optimizer step (the base class keeps
  the log std inside its clamp, where it has gradient).
* ``policy_stats() -> dict[str, float]``: extra ``train/`` statistics (``action_std``,
  ``log_std_min``, ``log_std_max`` for Gaussian policies), read by the diagnostics.
* ``continuous: bool`` and ``dist``: the action distribution (``policies/distributions.py``).
* ``recurrent_state_size: int``: 0 for feed-forward networks (the base class's default).

A recurrent network (``recurrent_state_size = S > 0``; the project's ``network.core=lstm|gru``)
carries one float32 state ``(B, S)`` per env, zeroed where an episode starts (CleanRL
``ppo_atari_lstm.py``), and differs in three places:

* ``forward(obs, state, episode_start) -> (dist_params, value, new_state)``: one step,
  ``episode_start`` ``(B,)`` bool (the state is zeroed in those rows first);
* ``forward_sequence(obs, state, episode_start) -> (dist_params, value)``: the replay of whole
  sequences, ``obs`` ``(T * B, ...)`` time-major, ``state`` ``(B, S)`` the state before step 0,
  ``episode_start`` ``(T, B)``; equal to ``T`` calls of ``forward``;
* ``evaluate_actions(obs, actions, state=..., episode_start=...)`` replays through
  ``forward_sequence`` (the rollout hands out whole env sequences: ``training/rollout.py``).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from ppo_lab.config import ActionType, ConfigError
from ppo_lab.policies.distributions import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    Bernoulli,
    Categorical,
    DiagGaussian,
    MultiCategorical,
)
from ppo_lab.policies.inference import InferencePolicy, NetworkPolicy

#: The methods and attributes every network must have (see the module docstring).
REQUIRED = ("forward", "evaluate_actions", "inference_policy", "after_optimizer_step", "policy_stats",
            "continuous", "dist", "parameters", "state_dict", "load_state_dict")
#: What a recurrent network (``recurrent_state_size > 0``) has besides.
REQUIRED_RECURRENT = ("forward_sequence",)


class ActorCriticBase(nn.Module):
    """What every actor-critic shares: the action distribution chosen from the action space, the
    state-independent log std of Gaussian policies (37 details, continuous detail 2), log-probs
    and entropies of stored actions, and acting through the torch forward. Subclasses write
    ``forward``.

    Args:
        observation_space: the single env's observation space.
        action_space: ``Discrete``, ``MultiDiscrete`` with a 1-D ``nvec``, ``MultiBinary(n)``
            (1-D), or a 1-D ``Box``.
        action_type: the configured action type; must match ``action_space``.
        log_std_init: initial log std (continuous only).

    Attributes:
        action_dim: width of ``dist_params`` that ``forward`` must return.
        recurrent_state_size: 0 (feed-forward); recurrent subclasses set their state width.

    Raises:
        ConfigError: the action type does not fit the action space.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        action_type: ActionType = ActionType.discrete,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        check_action_type(action_space, action_type)
        self.observation_space, self.action_space = observation_space, action_space
        self.continuous = action_type is ActionType.continuous
        if self.continuous:
            self.action_dim = int(np.prod(action_space.shape))
            self.dist = DiagGaussian()
            self.log_std = nn.Parameter(torch.full((self.action_dim,), float(log_std_init)))
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.action_dim = int(np.sum(action_space.nvec))
            self.dist = MultiCategorical(list(action_space.nvec.reshape(-1)))
        elif isinstance(action_space, gym.spaces.MultiBinary):
            self.action_dim = int(action_space.n)
            self.dist = Bernoulli()
        else:
            self.action_dim = int(action_space.n)
            self.dist = Categorical()

    recurrent_state_size: int = 0

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - the subclass's
        raise NotImplementedError

    def forward_sequence(self, obs: Tensor, state: Tensor, episode_start: Tensor) -> tuple[Tensor, Tensor]:
        """Recurrent networks: the replay of whole sequences (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} is not recurrent (recurrent_state_size=0)")

    def clamped_log_std(self) -> Tensor:
        """``(d,)`` log std clamped to [LOG_STD_MIN, LOG_STD_MAX] (continuous only)."""
        return self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, mask: Tensor | None = None, state: Tensor | None = None,
        episode_start: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``(B,)``, entropies ``(B,)`` and values ``(B,)`` of stored ``actions`` under
        the current policy; with ``mask`` ``(B, n)`` bool (True = valid), over the valid actions.
        Recurrent networks: ``obs``, ``actions`` and ``mask`` are ``(T * B, ...)`` time-major
        sequences replayed from ``state`` ``(B, S)`` with ``episode_start`` ``(T, B)``; the outputs
        are ``(T * B,)``."""
        if self.recurrent_state_size:
            params, value = self.forward_sequence(obs, state, episode_start)
        else:
            params, value = self(obs)
        if self.continuous:
            logp, ent = self.dist.log_prob_entropy(params, self.clamped_log_std(), actions)
        elif mask is not None:
            logp, ent = self.dist.log_prob_entropy(params, actions, mask)
        else:
            logp, ent = self.dist.log_prob_entropy(params, actions)
        return logp, ent, value

    def inference_policy(self) -> InferencePolicy:
        """The torch forward behind the numpy acting interface (:class:`NetworkPolicy`)."""
        return NetworkPolicy(self)

    def after_optimizer_step(self) -> None:
        """Keep the log std inside its clamp, where it still has gradient (continuous only)."""
        if self.continuous:
            with torch.no_grad():
                self.log_std.clamp_(LOG_STD_MIN, LOG_STD_MAX)

    def policy_stats(self) -> dict[str, float]:
        """``action_std`` (mean), ``log_std_min``, ``log_std_max`` for Gaussian policies; {} otherwise."""
        if not self.continuous:
            return {}
        ls = self.log_std.detach()
        return {"action_std": float(self.clamped_log_std().detach().exp().mean()),
                "log_std_min": float(ls.min()), "log_std_max": float(ls.max())}


def is_recurrent(network: object) -> bool:
    """Whether ``network`` carries a recurrent state (``recurrent_state_size > 0``); a user's
    network without the attribute is feed-forward."""
    return getattr(network, "recurrent_state_size", 0) > 0


def check_network(network: object, target: str) -> None:
    """Refuse a network that does not meet the protocol, naming what it lacks.

    Raises:
        ConfigError: e.g. ``network._target_=mymod.Net does not meet the network protocol: missing
            evaluate_actions, inference_policy ...``.
    """
    missing = [name for name in REQUIRED if not hasattr(network, name)]
    if is_recurrent(network):
        missing += [name for name in REQUIRED_RECURRENT if not hasattr(network, name)]
    if not isinstance(network, nn.Module):
        missing.insert(0, "torch.nn.Module base class")
    if missing:
        raise ConfigError(
            f"network._target_={target} does not meet the network protocol (ppo_lab/policies/protocol.py): "
            f"missing {', '.join(missing)}; subclass ppo_lab.policies.ActorCriticBase and write forward()"
        )


def check_action_type(action_space: gym.Space, action_type: ActionType) -> None:
    """Raise :class:`ConfigError` unless ``action_type`` fits ``action_space``: Discrete,
    MultiDiscrete with a 1-D ``nvec`` or MultiBinary with a 1-D shape for ``discrete``, a 1-D Box
    for ``continuous`` (the rollout buffer and the samplers hold actions as ``(B,)``, ``(B, k)``,
    ``(B, n)`` or ``(B, d)``)."""
    if isinstance(action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        actual = ActionType.discrete
        if isinstance(action_space, gym.spaces.MultiDiscrete) and action_space.nvec.ndim != 1:
            raise ConfigError(
                f"action space {action_space} has nvec of shape {action_space.nvec.shape}; allowed: "
                "Discrete, MultiDiscrete with a 1-D nvec, or MultiBinary with a 1-D shape"
            )
        if isinstance(action_space, gym.spaces.MultiBinary) and len(action_space.shape) != 1:
            raise ConfigError(
                f"action space {action_space} has shape {action_space.shape}; allowed: Discrete, "
                "MultiDiscrete with a 1-D nvec, or MultiBinary with a 1-D shape (MultiBinary(n))"
            )
    elif isinstance(action_space, gym.spaces.Box):
        actual = ActionType.continuous
        if len(action_space.shape) != 1:
            raise ConfigError(
                f"action space {action_space} has shape {action_space.shape}; allowed: a 1-D Box "
                "(action=continuous with shape (d,))"
            )
    else:
        raise ConfigError(
            f"action space {action_space} is not supported; allowed: Discrete, MultiDiscrete or "
            "MultiBinary (action=discrete), Box (action=continuous); Dict and Tuple action spaces "
            "are not supported"
        )
    if actual is not action_type:
        raise ConfigError(
            f"action={action_type.value} does not fit the env's action space {action_space}; "
            f"allowed: action={actual.value}"
        )
