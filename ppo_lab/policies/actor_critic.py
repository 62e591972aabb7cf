"""The project's actor-critic: shared trunk or separate actor and critic; MLP or Nature CNN.

Heads follow the 37 details, detail 2: gain 0.01 on the policy head, 1 on the value head.
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from ppo_lab.config import ActionType, ConfigError
from ppo_lab.policies.inference import FusedMLPPolicy, InferencePolicy
from ppo_lab.policies.layers import MLP, NatureCNN, layer_init
from ppo_lab.policies.protocol import ActorCriticBase


class ActorCritic(ActorCriticBase):
    """Policy and value function for one observation and action space.

    Args:
        observation_space: ``Box`` of the single (not batched) env. ``kind="mlp"`` flattens it;
            ``kind="cnn"`` expects ``(C, H, W)`` uint8 frames.
        action_space: ``Discrete`` (Categorical policy), ``MultiDiscrete`` (one Categorical per
            component) or ``Box`` (diagonal Gaussian with state-independent log std; 37 details,
            continuous detail 2).
        action_type: the configured action type; must match ``action_space``.
        kind: ``mlp`` or ``cnn``.
        shared: one trunk feeding both heads (true), or separate actor and critic (false).
        hidden_sizes: MLP widths, or ``[width]`` of the CNN's last layer.
        activation: ``tanh`` or ``relu`` (MLP only).
        log_std_init: initial log std (continuous only).

    Raises:
        ConfigError: the action type does not match the env's action space, or the network kind
            does not fit the observation (e.g. a CNN on vector observations).
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.Space,
        action_type: ActionType = ActionType.discrete,
        kind: str = "mlp",
        shared: bool = False,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__(observation_space, action_space, action_type, log_std_init)
        check_network_fits(observation_space, kind)
        self.shared = shared

        def trunk() -> tuple[nn.Module, int]:
            if kind == "cnn":
                c, h, w = observation_space.shape
                return NatureCNN(c, (h, w), hidden_sizes[-1]), hidden_sizes[-1]
            return MLP(int(np.prod(observation_space.shape)), hidden_sizes, activation), hidden_sizes[-1]

        self.actor_trunk, feat = trunk()
        self.critic_trunk = self.actor_trunk if shared else trunk()[0]
        self.policy_head = layer_init(nn.Linear(feat, self.action_dim), gain=0.01)
        self.value_head = layer_init(nn.Linear(feat, 1), gain=1.0)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """One fused pass: ``obs`` ``(B, *obs_shape)`` -> (logits ``(B, n)`` or mean ``(B, d)``, value ``(B,)``)."""
        actor_features = self.actor_trunk(obs)
        critic_features = actor_features if self.shared else self.critic_trunk(obs)
        head, vhead = self.policy_head, self.value_head
        return (F.linear(actor_features, head.weight, head.bias),
                F.linear(critic_features, vhead.weight, vhead.bias).squeeze(-1))

    def value(self, obs: Tensor) -> Tensor:
        """``(B,)`` state values V(s)."""
        vhead = self.value_head
        return F.linear(self.critic_trunk(obs), vhead.weight, vhead.bias).squeeze(-1)

    def inference_policy(self) -> InferencePolicy:
        """This network as a numpy-in, numpy-out policy for acting with frozen weights (rollouts
        and evaluation): a :class:`FusedMLPPolicy` snapshot for MLPs (derived from these very
        layers: one source of truth), the torch forward (:class:`NetworkPolicy`) for CNNs.

        Take a new one after every parameter update: the MLP snapshot does not follow the weights.
        """
        if isinstance(self.actor_trunk, MLP):
            return FusedMLPPolicy(self)
        return super().inference_policy()


def check_network_fits(observation_space: gym.Space, kind: str) -> None:
    """Raise :class:`ConfigError` when ``kind`` cannot read ``observation_space``."""
    if not isinstance(observation_space, gym.spaces.Box):
        raise ConfigError(f"observation space {observation_space} is not supported; allowed: Box")
    is_image = len(observation_space.shape) == 3 and observation_space.dtype == np.uint8
    if kind == "cnn" and not is_image:
        raise ConfigError(
            f"network.kind=cnn needs image observations (C, H, W) uint8, but the env gives "
            f"{observation_space.shape} {observation_space.dtype}; allowed: network=mlp_shared or "
            "network=mlp_separate"
        )
    if kind == "mlp" and is_image:
        raise ConfigError(
            f"network.kind=mlp on image observations {observation_space.shape}; allowed: "
            "network=cnn_shared or network=cnn_separate"
        )
