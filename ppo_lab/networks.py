"""Actor-critic networks: shared trunk or separate actor and critic; MLP or Nature CNN.

Initialization follows the 37 implementation details of PPO (Huang et al. 2022), detail 2:
orthogonal weights with gain sqrt(2) on hidden layers, 0.01 on the policy head and 1 on the value
head; zero biases. Image observations arrive as uint8 ``(B, C, H, W)`` and are scaled by 1/255
inside the network (Atari detail 9), so the rollout buffer can store uint8.
"""

from __future__ import annotations

import math
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppo_lab.config import ActionType, ConfigError
from ppo_lab.distributions import Categorical, DiagGaussian, MultiCategorical

#: Bounds of the state-independent log std: exp(-20) ~ 2e-9, exp(2) ~ 7.4. Keeps log-probs finite.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def layer_init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weight init with ``gain`` and constant bias (37 details, detail 2)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class MLP(nn.Module):
    """Hidden layers of an MLP: ``(B, *obs_shape)`` flattened to ``(B, in_dim)`` ->
    ``(B, hidden_sizes[-1])``, each layer followed by the activation.

    The forward pass calls ``F.linear`` on the layers' own parameters instead of calling each
    submodule: on the tiny networks of classic control, module-call overhead is a large share of
    the rollout's per-step cost (issue #8). Parameters, init and ``state_dict`` are the usual ones.
    """

    def __init__(self, in_dim: int, hidden_sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        layers = []
        for width in hidden_sizes:
            layers.append(layer_init(nn.Linear(in_dim, width)))
            in_dim = width
        self.layers = nn.ModuleList(layers)
        self.activation = {"tanh": torch.tanh, "relu": torch.relu}[activation]

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.flatten(1) if obs.dim() > 2 else obs
        for layer in self.layers:
            x = self.activation(F.linear(x, layer.weight, layer.bias))
        return x


class NatureCNN(nn.Module):
    """Nature DQN trunk (Mnih et al. 2015): uint8 ``(B, C, 84, 84)`` -> ``(B, hidden)`` features.

    Pixels are scaled by 1/255 here, so observations stay uint8 until they reach the network.
    """

    def __init__(self, in_channels: int, screen: tuple[int, int], hidden: int = 512) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            layer_init(nn.Conv2d(in_channels, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, in_channels, *screen)).shape[1]
        self.fc = nn.Sequential(layer_init(nn.Linear(n_flat, hidden)), nn.ReLU())

    def forward(self, obs: Tensor) -> Tensor:
        return self.fc(self.convs(obs.float() / 255.0))


class ActorCritic(nn.Module):
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
        super().__init__()
        check_action_type(action_space, action_type)
        check_network_fits(observation_space, kind)
        self.continuous = action_type is ActionType.continuous
        if self.continuous:
            out_dim = int(np.prod(action_space.shape))
            self.dist = DiagGaussian()
            self.log_std = nn.Parameter(torch.full((out_dim,), float(log_std_init)))
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            out_dim = int(np.sum(action_space.nvec))
            self.dist = MultiCategorical(list(action_space.nvec.reshape(-1)))
        else:
            out_dim = int(action_space.n)
            self.dist = Categorical()
        self.shared = shared

        def trunk() -> tuple[nn.Module, int]:
            if kind == "cnn":
                c, h, w = observation_space.shape
                return NatureCNN(c, (h, w), hidden_sizes[-1]), hidden_sizes[-1]
            return MLP(int(np.prod(observation_space.shape)), hidden_sizes, activation), hidden_sizes[-1]

        self.actor_trunk, feat = trunk()
        self.critic_trunk = self.actor_trunk if shared else trunk()[0]
        self.policy_head = layer_init(nn.Linear(feat, out_dim), gain=0.01)
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

    def clamped_log_std(self) -> Tensor:
        """``(d,)`` log std clamped to [LOG_STD_MIN, LOG_STD_MAX] (continuous only)."""
        return self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Choose actions for a batch of observations.

        Args:
            obs: ``(B, *obs_shape)``.
            deterministic: take the mode (argmax / mean) instead of sampling.

        Returns:
            actions ``(B,)`` int64 (``(B, k)`` for MultiDiscrete) or ``(B, d)`` float (unclipped),
            their log-probs ``(B,)``, values ``(B,)``.
        """
        return self.act_from(*self(obs), deterministic)

    def act_from(
        self, params: Tensor, value: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`act` from the heads' outputs: logits ``(B, n)`` or mean ``(B, d)``, and value ``(B,)``."""
        if self.continuous:
            log_std = self.clamped_log_std()
            if deterministic:
                action = self.dist.mode(params)
                return action, self.dist.log_prob(params, log_std, action), value
            return (*self.dist.sample_and_log_prob(params, log_std), value)
        if deterministic:
            action = self.dist.mode(params)
            return action, self.dist.log_prob(params, action), value
        return (*self.dist.sample_and_log_prob(params), value)

    def inference_policy(self) -> "ActorCritic | FusedMLPPolicy":
        """The fastest equivalent of this network for acting with frozen weights (rollouts and
        evaluation): a :class:`FusedMLPPolicy` snapshot for MLPs, the network itself for CNNs.

        Take a new one after every parameter update; a snapshot does not follow the weights.
        """
        if isinstance(self.actor_trunk, MLP):
            return FusedMLPPolicy(self)
        return self

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``(B,)``, entropies ``(B,)`` and values ``(B,)`` of stored ``actions`` under the current policy."""
        params, value = self(obs)
        if self.continuous:
            logp, ent = self.dist.log_prob_entropy(params, self.clamped_log_std(), actions)
        else:
            logp, ent = self.dist.log_prob_entropy(params, actions)
        return logp, ent, value


class FusedMLPPolicy:
    """Inference-only snapshot of an MLP :class:`ActorCritic` with actor and critic fused into
    one chain of matmuls (issue #8: one fused actor+critic forward per env step).

    The hidden layers of separate actor and critic MLPs become block-diagonal layers of twice the
    width (the first layer stacks both, since both read the observation), and the policy and
    value heads become one head with ``n + 1`` outputs. A shared trunk keeps its layers and only
    merges the heads. A rollout step thus runs ``len(hidden_sizes) + 1`` ``addmm`` calls instead
    of ``2 * len(hidden_sizes) + 2``; the zero blocks cost nothing measurable at these widths.
    Outputs equal the network's up to float rounding (``tests/test_networks.py``), and sampling
    goes through the network's own distribution (:meth:`ActorCritic.act_from`), so it draws the
    same random numbers.

    Args:
        network: an ActorCritic whose trunks are :class:`MLP` (``kind="mlp"``).
    """

    def __init__(self, network: ActorCritic) -> None:
        self.network = network
        self.activation = network.actor_trunk.activation
        actor, critic = network.actor_trunk.layers, network.critic_trunk.layers
        policy, value = network.policy_head, network.value_head
        with torch.no_grad():
            if network.shared:
                layers = [(layer.weight, layer.bias) for layer in actor]
                head_w = torch.cat([policy.weight, value.weight])
            else:
                # Both first layers read the observation: stack them; later layers are block-diagonal.
                first_a, first_c = actor[0], critic[0]
                layers = [(torch.cat([first_a.weight, first_c.weight]), torch.cat([first_a.bias, first_c.bias]))]
                layers += [(torch.block_diag(a.weight, c.weight), torch.cat([a.bias, c.bias]))
                           for a, c in zip(actor[1:], critic[1:])]
                head_w = torch.block_diag(policy.weight, value.weight)
            # Copies (a snapshot must not follow the parameters), with the weights as contiguous
            # (in, out) matrices for addmm: transposed once here, not per step.
            self.layers = [(_snapshot(w.t()), _snapshot(b)) for w, b in layers]
            self.head = (_snapshot(head_w.t()), torch.cat([policy.bias, value.bias]))

    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs`` ``(B, *obs_shape)`` -> (logits or mean ``(B, n)``, value ``(B,)``)."""
        x = obs.flatten(1) if obs.dim() > 2 else obs
        for w, b in self.layers:
            x = self.activation(torch.addmm(b, x, w))
        out = torch.addmm(self.head[1], x, self.head[0])
        return out[:, :-1], out[:, -1]

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Same contract as :meth:`ActorCritic.act`."""
        return self.network.act_from(*self(obs), deterministic)

    def value(self, obs: Tensor) -> Tensor:
        """``(B,)`` state values V(s)."""
        return self(obs)[1]


def _snapshot(t: Tensor) -> Tensor:
    """A contiguous copy of ``t`` that shares no memory with it."""
    return t.clone(memory_format=torch.contiguous_format)


def check_action_type(action_space: gym.Space, action_type: ActionType) -> None:
    """Raise :class:`ConfigError` unless ``action_type`` fits ``action_space``."""
    if isinstance(action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        actual = ActionType.discrete
    elif isinstance(action_space, gym.spaces.Box):
        actual = ActionType.continuous
    else:
        raise ConfigError(
            f"action space {action_space} is not supported; allowed: Discrete or MultiDiscrete "
            "(action=discrete), Box (action=continuous)"
        )
    if actual is not action_type:
        raise ConfigError(
            f"action={action_type.value} does not fit the env's action space {action_space}; "
            f"allowed: action={actual.value}"
        )


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
