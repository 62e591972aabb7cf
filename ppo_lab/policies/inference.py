"""Acting with frozen weights, numpy in and numpy out (rollouts and evaluation).

:class:`NetworkPolicy` acts through any network's torch forward: the reference. The numpy fast
path, :class:`FusedMLPPolicy`, is derived from the project's own :class:`~ppo_lab.policies.layers.MLP`
trunks (their layers and activation name), refuses anything else, and is parity-tested against
the torch forward (``tests/test_networks.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ppo_lab.policies.distributions import Categorical, MultiCategorical, Rng
from ppo_lab.policies.layers import MLP
from ppo_lab.policies.observations import obs_batch_size, obs_to_tensor  # obs_to_tensor: also importable from here, its old home

if TYPE_CHECKING:
    from ppo_lab.policies.protocol import ActorCriticBase as ActorCritic


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

    #: The carried recurrent state ``(B, S)`` float32 (recurrent policies); None for feed-forward ones.
    state: np.ndarray | None = None

    def __init__(self, network: ActorCritic) -> None:
        self.dist = network.dist
        self.continuous = network.continuous
        self.log_std = network.clamped_log_std().detach().cpu().numpy().copy() if self.continuous else None

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``obs`` ``(B, *obs_shape)`` -> (float32 logits ``(B, n)`` or mean ``(B, d)``, value ``(B,)``)."""
        raise NotImplementedError

    def reset_state(self, batch: int) -> None:
        """Start ``batch`` fresh episodes (recurrent policies zero their state; others have none)."""

    def step(self, obs: np.ndarray, episode_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The forward pass of one acting step; recurrent policies also advance :attr:`state`."""
        return self(obs)

    def act(
        self, obs: np.ndarray, rng: Rng, deterministic: bool = False,
        mask: np.ndarray | None = None, episode_start: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Choose actions for a batch of observations.

        Args:
            obs: ``(B, *obs_shape)`` as the env returned them.
            rng: the generator the sampled actions are drawn from (unused when deterministic).
            deterministic: take the mode (argmax / mean) instead of sampling.
            mask: ``(B, n)`` (``(B, sum(nvec))`` for MultiDiscrete) bool, True = valid: invalid
                actions are never chosen and log-probs are over the valid ones
                (``distributions.MASKED_LOGIT``). None: every action is valid.
            episode_start: ``(B,)`` bool, True where ``obs`` is an episode's first observation:
                a recurrent policy zeroes those rows of its state first (None: no episode starts).
                Feed-forward policies ignore it.

        Returns:
            actions ``(B,)`` int64 (``(B, k)`` for MultiDiscrete, ``(B, n)`` bits for
            MultiBinary) or ``(B, d)`` float32 (unclipped), their float32 log-probs ``(B,)``,
            values ``(B,)``.

        Raises:
            ValueError: a mask for a distribution that has none (Gaussian, Bernoulli).
        """
        params, value = self.step(obs, episode_start)
        dist_args = (params, self.log_std) if self.continuous else (params,)
        if mask is not None:
            if not isinstance(self.dist, (Categorical, MultiCategorical)):
                raise ValueError(f"action masks apply to Discrete and MultiDiscrete actions; this policy's "
                                 f"distribution is {type(self.dist).__name__}")
            if deterministic:
                action = self.dist.mode(params, mask)
                return action, self.dist.log_prob(params, action, mask), value
            return (*self.dist.sample(params, rng, mask), value)
        if deterministic:
            action = self.dist.mode(params)
            return action, self.dist.log_prob(*dist_args, action), value
        return (*self.dist.sample(*dist_args, rng), value)

    def value(self, obs: np.ndarray, episode_start: np.ndarray | None = None) -> np.ndarray:
        """``(B,)`` float32 state values V(s) (recurrent: from the carried state, which is not
        advanced; ``episode_start`` as in :meth:`act`)."""
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
        trunks = (network.actor_trunk, network.critic_trunk)
        if not all(isinstance(t, MLP) for t in trunks):
            raise TypeError(f"FusedMLPPolicy needs MLP trunks, got {[type(t).__name__ for t in trunks]}")
        names = {t.activation_name for t in trunks}
        if len(names) != 1 or not names <= set(NUMPY_ACTIVATIONS):
            raise TypeError(f"FusedMLPPolicy has no numpy form of activations {sorted(names)}")
        self.activation = NUMPY_ACTIVATIONS[names.pop()]
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

    #: Leading batch dims of the observations: ``(B,)``; ``(M, B)`` for :class:`StackedMLPPolicy`.
    batch_dims = 1

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``obs`` ``(B, *obs_shape)`` -> (logits or mean ``(B, n)``, value ``(B,)``), float32
        (with ``M`` stacked members, ``(M, B, ...)`` in and out: ``@`` multiplies each slice)."""
        x = np.asarray(obs, dtype=np.float32)
        x = x.reshape(*x.shape[:self.batch_dims], -1)
        *hidden, (head_w, head_b) = self.layers
        for w, b in hidden:
            x = self.activation(x @ w + b)
        out = x @ head_w + head_b
        return out[..., :-1], out[..., -1]


class StackedMLPPolicy(FusedMLPPolicy):
    """``M`` members' :class:`FusedMLPPolicy` snapshots as one batched forward (a population's
    lockstep rollout, ``training/rollout.collect_rollouts``).

    Each layer's weights are stacked to ``(M, in, out)`` (biases ``(M, 1, out)``) and applied by
    :class:`FusedMLPPolicy`'s forward, one matmul on ``(M, B, in)`` observations, where ``M`` separate policies make ``M`` calls; the heads'
    outputs feed the members' distribution with one generator per member (``act(obs, rngs)``,
    ``distributions.draw``), so member ``m`` draws what its solo rollout draws. Outputs equal
    each member's own policy up to float32 rounding (``tests/test_population.py``).

    Args:
        policies: the members' snapshots; :meth:`refusal` must be None for them.

    Raises:
        ValueError: the snapshots cannot be stacked (the message says why).
    """

    batch_dims = 2

    def __init__(self, policies: Sequence[FusedMLPPolicy]) -> None:  # built from snapshots, not a network
        reason = self.refusal(policies)
        if reason:
            raise ValueError(f"cannot stack these policies: {reason}")
        first = policies[0]
        self.dist, self.continuous, self.activation = first.dist, first.continuous, first.activation
        self.log_std = np.stack([p.log_std for p in policies])[:, None] if self.continuous else None  # (M, 1, d)
        self.layers = [(np.stack([p.layers[k][0] for p in policies]), np.stack([p.layers[k][1] for p in policies])[:, None])
                       for k in range(len(first.layers))]

    @staticmethod
    def refusal(policies: Sequence[InferencePolicy]) -> Optional[str]:
        """Why ``policies`` cannot act as one stack (None when they can): each must be a
        :class:`FusedMLPPolicy` of one layer shape, activation and action distribution."""
        if any(type(p) is not FusedMLPPolicy for p in policies):
            return f"only FusedMLPPolicy snapshots stack (got {sorted({type(p).__name__ for p in policies})})"
        first = policies[0]
        for p in policies[1:]:
            if ([w.shape for w, _ in p.layers] != [w.shape for w, _ in first.layers] or p.activation is not first.activation
                    or type(p.dist) is not type(first.dist) or getattr(p.dist, "nvec", None) != getattr(first.dist, "nvec", None)):
                return "the members' networks differ in architecture or action distribution"
        return None


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
        """``obs`` ``(B, *obs_shape)``, or ``{key: (B, *entry_shape)}`` for Dict observations
        (uint8 pixels stay uint8) -> (float32 logits or mean ``(B, n)``, value ``(B,)``),
        computed on the network's device and copied to the host."""
        network = self.network
        was_training = network.training
        network.eval()  # acting is inference (SB3's set_training_mode(False)): dropout off, say
        try:
            params, value = network(obs_to_tensor(obs, self.device))
        finally:
            network.train(was_training)
        return params.float().cpu().numpy(), value.float().cpu().numpy()


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _snapshot(t: Tensor) -> np.ndarray:
    """A contiguous float32 numpy copy of ``t`` that shares no memory with it."""
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)


#: numpy twins of ``layers.TORCH_ACTIVATIONS``, by the same names.
NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": _relu}


class RecurrentNetworkPolicy(InferencePolicy):
    """A recurrent network's torch step behind the numpy interface, carrying the state.

    :attr:`state` ``(B, S)`` float32 lives on the host between steps (the rollout stores it at
    its start, checkpoints save it); :meth:`reset_state` zeroes it for ``B`` new episodes.
    """

    def __init__(self, network: ActorCritic) -> None:
        super().__init__(network)
        self.network = network
        self.device = next(network.parameters()).device
        self.state_size = int(network.recurrent_state_size)

    def reset_state(self, batch: int) -> None:
        self.state = np.zeros((batch, self.state_size), dtype=np.float32)

    @torch.inference_mode()
    def _forward(self, obs: np.ndarray, episode_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = obs_batch_size(obs)
        if self.state is None or len(self.state) != batch:
            self.reset_state(batch)
        starts = np.zeros(batch, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool)
        network = self.network
        was_training = network.training
        network.eval()
        try:
            params, value, state = network(obs_to_tensor(obs, self.device), torch.from_numpy(self.state).to(self.device),
                                           torch.from_numpy(starts).to(self.device))
        finally:
            network.train(was_training)
        return params.float().cpu().numpy(), value.float().cpu().numpy(), state.float().cpu().numpy()

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step from the carried state, without advancing it."""
        params, value, _ = self._forward(obs, None)
        return params, value

    def step(self, obs: np.ndarray, episode_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        params, value, self.state = self._forward(obs, episode_start)
        return params, value

    def value(self, obs: np.ndarray, episode_start: np.ndarray | None = None) -> np.ndarray:
        return self._forward(obs, episode_start)[1]
