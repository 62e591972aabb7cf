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
    ``(B, hidden_sizes[-1])``, each layer followed by the activation. Integer observations
    (a non-image uint8 ``Box``, say) enter as their float32 values, unscaled (as SB3's
    ``preprocess_obs`` does for non-image boxes); ``env.normalize_obs=true`` scales them.

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
        if not x.is_floating_point():  # e.g. uint8 RAM or byte features: their values, as float32
            x = x.float()
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

    def inference_policy(self) -> "InferencePolicy":
        """This network as a numpy-in, numpy-out policy for acting with frozen weights (rollouts
        and evaluation): a :class:`FusedMLPPolicy` snapshot for MLPs, a :class:`NetworkPolicy`
        (torch forward on the network's device) for CNNs.

        Take a new one after every parameter update: the MLP snapshot does not follow the weights.
        """
        if isinstance(self.actor_trunk, MLP):
            return FusedMLPPolicy(self)
        return NetworkPolicy(self)

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``(B,)``, entropies ``(B,)`` and values ``(B,)`` of stored ``actions`` under the current policy."""
        params, value = self(obs)
        if self.continuous:
            logp, ent = self.dist.log_prob_entropy(params, self.clamped_log_std(), actions)
        else:
            logp, ent = self.dist.log_prob_entropy(params, actions)
        return logp, ent, value


def obs_to_tensor(obs: np.ndarray, device: torch.device | str) -> Tensor:
    """A batch of env observations as the network's input: uint8 pixels stay uint8, anything
    else becomes float32 (MuJoCo v5 returns float64)."""
    obs = np.asarray(obs)
    dtype = torch.uint8 if obs.dtype == np.uint8 else torch.float32
    return torch.as_tensor(obs, dtype=dtype, device=device)


class InferencePolicy:
    """Acting with frozen weights, numpy in and numpy out: what rollouts and evaluation call.

    The env speaks numpy, so the rollout does too (issue #8): observations go in as the env
    returned them, actions come out ready for ``envs.step``, and the rollout buffer is filled
    without per-step tensor traffic. Subclasses give the forward pass (:meth:`__call__`);
    sampling is the network's distribution (``ppo_lab.distributions``), drawn from the
    ``numpy.random.Generator`` passed in, so a run is reproducible from its seed and a resumed
    run continues the same draws (the collector checkpoints its generator).

    Args:
        network: the :class:`ActorCritic` to act for; its log std (continuous actions) is copied.
    """

    def __init__(self, network: ActorCritic) -> None:
        self.dist = network.dist
        self.continuous = network.continuous
        self.log_std = network.clamped_log_std().detach().cpu().numpy().copy() if self.continuous else None

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``obs`` ``(B, *obs_shape)`` -> (float32 logits ``(B, n)`` or mean ``(B, d)``, value ``(B,)``)."""
        raise NotImplementedError

    def act(
        self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Choose actions for a batch of observations.

        Args:
            obs: ``(B, *obs_shape)`` as the env returned them.
            rng: the generator the sampled actions are drawn from (unused when deterministic).
            deterministic: take the mode (argmax / mean) instead of sampling.

        Returns:
            actions ``(B,)`` int64 (``(B, k)`` for MultiDiscrete) or ``(B, d)`` float32
            (unclipped), their float32 log-probs ``(B,)``, values ``(B,)``.
        """
        params, value = self(obs)
        dist_args = (params, self.log_std) if self.continuous else (params,)
        if deterministic:
            action = self.dist.mode(params)
            return action, self.dist.log_prob(*dist_args, action), value
        return (*self.dist.sample(*dist_args, rng), value)

    def value(self, obs: np.ndarray) -> np.ndarray:
        """``(B,)`` float32 state values V(s)."""
        return self(obs)[1]


class FusedMLPPolicy(InferencePolicy):
    """Numpy snapshot of an MLP :class:`ActorCritic` with actor and critic fused into one chain
    of matmuls (issue #8: one fused actor+critic forward per env step, in numpy).

    The hidden layers of separate actor and critic MLPs become block-diagonal layers of twice the
    width (the first layer stacks both, since both read the observation), and the policy and
    value heads become one head with ``n + 1`` outputs. A shared trunk keeps its layers and only
    merges the heads. A rollout step thus runs ``len(hidden_sizes) + 1`` matmuls instead of
    ``2 * len(hidden_sizes) + 2``; the zero blocks cost nothing measurable at these widths.
    Outputs equal the network's up to float32 rounding (``tests/test_networks.py``).

    Args:
        network: an ActorCritic whose trunks are :class:`MLP` (``kind="mlp"``).
    """

    def __init__(self, network: ActorCritic) -> None:
        super().__init__(network)
        activation = network.actor_trunk.activation
        self.activation = np.tanh if activation is torch.tanh else _relu
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
            layers.append((head_w, torch.cat([policy.bias, value.bias])))
            # Copies (a snapshot must not follow the parameters), with the weights as contiguous
            # (in, out) matrices: transposed once here, not per step.
            self.layers = [(_snapshot(w.t()), _snapshot(b)) for w, b in layers]

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``obs`` ``(B, *obs_shape)`` -> (logits or mean ``(B, n)``, value ``(B,)``), float32."""
        x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
        *hidden, (head_w, head_b) = self.layers
        for w, b in hidden:
            x = self.activation(x @ w + b)
        out = x @ head_w + head_b
        return out[:, :-1], out[:, -1]


class NetworkPolicy(InferencePolicy):
    """The network's own torch forward behind the numpy interface (CNNs, where the convolutions
    dominate and want torch's kernels and the network's device). The forward reads the live
    weights, but the log std is copied: take a new policy after every update, as for MLPs."""

    def __init__(self, network: ActorCritic) -> None:
        super().__init__(network)
        self.network = network
        self.device = next(network.parameters()).device

    @torch.inference_mode()
    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``obs`` ``(B, *obs_shape)`` (uint8 pixels stay uint8) -> (float32 logits or mean
        ``(B, n)``, value ``(B,)``), computed on the network's device and copied to the host."""
        params, value = self.network(obs_to_tensor(obs, self.device))
        return params.float().cpu().numpy(), value.float().cpu().numpy()


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _snapshot(t: Tensor) -> np.ndarray:
    """A contiguous float32 numpy copy of ``t`` that shares no memory with it."""
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)


def check_action_type(action_space: gym.Space, action_type: ActionType) -> None:
    """Raise :class:`ConfigError` unless ``action_type`` fits ``action_space``: Discrete or
    MultiDiscrete with a 1-D ``nvec`` for ``discrete``, a 1-D Box for ``continuous`` (the rollout
    buffer and the samplers hold actions as ``(B,)``, ``(B, k)`` or ``(B, d)``)."""
    if isinstance(action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        actual = ActionType.discrete
        if isinstance(action_space, gym.spaces.MultiDiscrete) and action_space.nvec.ndim != 1:
            raise ConfigError(
                f"action space {action_space} has nvec of shape {action_space.nvec.shape}; allowed: "
                "Discrete, or MultiDiscrete with a 1-D nvec"
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
