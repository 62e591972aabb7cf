"""Acting with frozen weights, numpy in and numpy out (rollouts and evaluation).

:class:`NetworkPolicy` acts through any network's torch forward: the reference. The numpy fast
path, :class:`FusedMLPPolicy`, is derived from the project's own :class:`~ppo_lab.policies.layers.MLP`
trunks (their layers and activation name), refuses anything else, and is parity-tested against
the torch forward (``tests/test_networks.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ppo_lab.policies.layers import MLP
from ppo_lab.policies.observations import obs_to_tensor  # also importable from here, its old home

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
