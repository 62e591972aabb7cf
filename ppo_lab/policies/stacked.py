"""Many copies of the project's MLP actor-critic as one batched computation (population sweeps).

``M`` members of one architecture keep their parameters in the rows of one ``(M, P)`` buffer
(``algo.optim.StackedAdam``). :class:`StackedActorCritic` views each parameter of all members at
once, ``(M, *shape)`` (a strided view of the buffer: no copy), and runs the members' forward
passes as batched matrix products, ``torch.baddbmm`` on ``(M, B, in)`` inputs and ``(M, out, in)``
weights: one call per layer for the whole population, where ``M`` separate runs make ``M``.
Gradients land in the buffer's gradient rows, where the stacked Adam reads them.

Why batched layers rather than ``torch.func.vmap(functional_call)``: on these small networks
the cost of a step is per-call overhead, and ``vmap`` adds its own (``docs/population.md``).

The update's fast path, :meth:`StackedActorCritic.loss_and_backward`, goes one step further: the
same layers in numpy with the gradient derived by hand (tanh/ReLU MLP trunks, linear heads, a
Categorical or diagonal Gaussian), given the loss's gradient with respect to the log-probs,
entropies and values (``algo/loss_grads.py``). No autograd graph is built: a minibatch step is a
few dozen numpy calls instead of ~150 ATen ops and their autograd nodes (and torch's batched
matmul is slow for the 1- and 2-wide heads). :meth:`StackedActorCritic.numpy_refusal` names what it
does not handle; the autograd path (:meth:`StackedActorCritic.evaluate_actions`) remains the
reference, and the two are parity-tested (``tests/test_loss_grads.py``).

It is a fast path derived from :class:`~ppo_lab.policies.actor_critic.ActorCritic` (habit 14):
it reads the module's own layers, activation, heads and distribution, refuses any network it
does not know (:func:`stack_refusal`), and is parity-tested against the module's forward
(``tests/test_population.py``).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ppo_lab.policies.distributions import LOG_SQRT_2PI, LOG_STD_MAX, LOG_STD_MIN, Categorical, DiagGaussian
from ppo_lab.policies.layers import MLP, numpy_tanh

#: What :meth:`StackedActorCritic.loss_and_backward` asks of the loss: given the ``(M, B)``
#: log-probs, entropies and values, the named ``(M,)`` terms and d loss / d each of the three.
LossWithGrads = Callable[[np.ndarray, np.ndarray, np.ndarray],
                         tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]]


# A member's (out, 1)-shaped parameters are strided views of its buffer row; autograd warns that such
# a gradient layout "may impair performance", and accumulates into it in place all the same.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def stack_refusal(network: nn.Module) -> Optional[str]:
    """Why ``network`` cannot be stacked with others (None when it can): only the project's
    :class:`ActorCritic` with MLP trunks on vector (or one-hot / bit) observations, feed-forward
    and not compiled; recurrent cores, CNNs, Dict extractors and user networks train one member
    per process."""
    from ppo_lab.policies.actor_critic import ActorCritic

    if type(network) is not ActorCritic:
        return f"{type(network).__module__}.{type(network).__qualname__} is not the project's ActorCritic"
    if network.actor_core is not None:
        return "recurrent cores (network.core) are not stacked"
    if not isinstance(network.actor_trunk, MLP) or not isinstance(network.critic_trunk, MLP):
        return "only MLP trunks are stacked (not CNN or Dict extractors)"
    if network.encoder is not None and any(True for _ in network.encoder.parameters()):
        return "the observation encoder has parameters"
    return None


def architecture_difference(networks: Sequence[nn.Module]) -> Optional[str]:
    """What differs between networks that :func:`stack_refusal` accepts (None when nothing does):
    their parameter names and shapes, shared trunk, trunk activations, or action distribution.
    Stacked networks run the first one's layers for every member, so these must agree."""
    def describe(net: nn.Module) -> dict[str, object]:
        dist = net.dist
        return {"parameter shapes": [(n, tuple(p.shape)) for n, p in net.named_parameters()],
                "network.shared": net.shared,
                "network.activation": (net.actor_trunk.activation_name, net.critic_trunk.activation_name),
                "action distribution": (type(dist).__name__, getattr(dist, "nvec", None)),
                "observation encoder": type(net.encoder).__name__}

    first = describe(networks[0])
    for net in networks[1:]:
        other = describe(net)
        for key, value in first.items():
            if other[key] != value:
                shown = "differ" if key == "parameter shapes" else f"{value} against {other[key]}"
                return f"the members' networks differ in {key} ({shown})"
    return None


class StackedActorCritic:
    """The batched forward of ``M`` :class:`ActorCritic` MLPs whose parameters are rows of one buffer.

    Args:
        networks: the members' networks (one architecture; :func:`stack_refusal` is None for each).
        flat, flat_grad: the ``(M, P)`` parameter and gradient buffers (``StackedAdam``) whose
            row ``m`` holds ``networks[m]``'s parameters in ``named_parameters()`` order.

    Raises:
        ValueError: a network cannot be stacked, or the networks differ in architecture
            (:func:`architecture_difference`).
    """

    def __init__(self, networks: Sequence[nn.Module], flat: Tensor, flat_grad: Tensor) -> None:
        for net in networks:
            reason = stack_refusal(net)
            if reason:
                raise ValueError(f"cannot stack this network: {reason}")
        difference = architecture_difference(networks)
        if difference:
            raise ValueError(f"cannot stack these networks: {difference}")
        shapes = [[(n, tuple(p.shape)) for n, p in net.named_parameters()] for net in networks]
        self.template = networks[0]
        self.members = len(networks)
        #: ``name -> (M, *shape)`` leaves whose data and grad are views of ``flat`` / ``flat_grad``.
        self.params: dict[str, nn.Parameter] = {}
        offset, m = 0, self.members
        for name, shape in shapes[0]:
            n = int(torch.Size(shape).numel())
            param = nn.Parameter(torch.empty(0, device=flat.device, dtype=flat.dtype))
            param.data = flat[:, offset:offset + n].view(m, *shape)
            param.grad = flat_grad[:, offset:offset + n].view(m, *shape)
            self.params[name] = param
            offset += n
        net = self.template
        # numpy's tanh where the members' MLPs use torch's: the same function to float32 rounding,
        # several times faster on CPU (``layers.numpy_tanh``).
        act = net.actor_trunk.activation
        self.activation = numpy_tanh if act is torch.tanh else act
        critic = "actor_trunk" if net.shared else "critic_trunk"
        #: Each trunk's layers by parameter-name prefix (a shared trunk's critic is its actor).
        self._layer_names = {"actor": [f"actor_trunk.layers.{i}" for i in range(len(net.actor_trunk.layers))],
                             "critic": [f"{critic}.layers.{i}" for i in range(len(net.critic_trunk.layers))]}
        self.actor_layers = [self._linear(name) for name in self._layer_names["actor"]]
        self.critic_layers = [self._linear(name) for name in self._layer_names["critic"]]
        self.policy_head, self.value_head = self._linear("policy_head"), self._linear("value_head")
        # The numpy fast path's views: each parameter's values and gradient as ``(M, *shape)``
        # numpy arrays sharing memory with the buffers (Adam's in-place steps show through).
        self._np_tanh = net.actor_trunk.activation_name == "tanh"
        self._np_params, self._np_grads = {}, {}
        if flat.device.type == "cpu" and flat.dtype == torch.float32:
            flat_np, grad_np = flat.numpy(), flat_grad.numpy()
            offset = 0
            for name, shape in shapes[0]:
                n = int(np.prod(shape, dtype=np.int64))
                self._np_params[name] = flat_np[:, offset:offset + n].reshape(m, *shape)
                self._np_grads[name] = grad_np[:, offset:offset + n].reshape(m, *shape)
                assert np.shares_memory(self._np_grads[name], grad_np), name  # a view, not a copy
                offset += n

    def _linear(self, prefix: str) -> tuple[Tensor, Tensor]:
        """A layer's ``(M, in, out)`` weight (transposed view) and ``(M, 1, out)`` bias."""
        return self.params[f"{prefix}.weight"].transpose(1, 2), self.params[f"{prefix}.bias"].unsqueeze(1)

    def _features(self, x: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        for weight, bias in layers:
            x = self.activation(torch.baddbmm(bias, x, weight))
        return x

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs`` ``(M, B, *obs_shape)`` -> dist params ``(M, B, n)`` and values ``(M, B)``:
        member m's forward on row m (``ActorCritic.forward`` and ``MLP.forward``, batched)."""
        net, m, b = self.template, obs.shape[0], obs.shape[1]
        if net.encoder is not None:
            obs = net.encoder(obs.reshape(m * b, *obs.shape[2:])).reshape(m, b, -1)
        x = obs.flatten(2) if obs.dim() > 3 else obs
        if not x.is_floating_point():
            x = x.float()
        actor = self._features(x, self.actor_layers)
        critic = actor if net.shared else self._features(x, self.critic_layers)
        (pw, pb), (vw, vb) = self.policy_head, self.value_head
        return torch.baddbmm(pb, actor, pw), torch.baddbmm(vb, critic, vw).squeeze(-1)

    def evaluate_actions(self, obs: Tensor, actions: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs, entropies and values ``(M, B)`` of stored ``actions`` ``(M, B, ...)``
        (``ActorCriticBase.evaluate_actions`` per member; ``mask`` ``(M, B, n)`` bool or None)."""
        net = self.template
        params, value = self.forward(obs)
        if net.continuous:
            log_std = self.params["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX).unsqueeze(1)
            logp, ent = net.dist.log_prob_entropy(params, log_std, actions)
        elif mask is not None:
            logp, ent = net.dist.log_prob_entropy(params, actions, mask)
        else:
            logp, ent = net.dist.log_prob_entropy(params, actions)
        return logp, ent, value

    # ------------------------------------------------------------------ the numpy fast path
    def numpy_refusal(self) -> Optional[str]:
        """Why :meth:`loss_and_backward` cannot train these networks (None when it can): it
        handles float32 CPU parameters, tanh or ReLU MLP trunks and a Categorical (``Discrete``
        actions) or diagonal Gaussian (``Box``) policy; action masks are the caller's to refuse."""
        net = self.template
        if not self._np_params:
            return "the parameters are not float32 on the CPU"
        if net.actor_trunk.activation_name not in ("tanh", "relu"):
            return f"no hand-derived gradient of activation {net.actor_trunk.activation_name!r}"
        if type(net.dist) not in (Categorical, DiagGaussian):
            return f"no hand-derived gradient of {type(net.dist).__name__} policies"
        return None

    def _np_trunk(self, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """The inputs and activations of a trunk's layers: ``[x, h_1, ..., h_L]``, each ``(M, B, width)``."""
        hs = [x]
        for name in names:
            z = np.matmul(hs[-1], self._np_params[f"{name}.weight"].transpose(0, 2, 1))
            z += self._np_params[f"{name}.bias"][:, None, :]
            hs.append(np.tanh(z, out=z) if self._np_tanh else np.maximum(z, np.float32(0.0), out=z))
        return hs

    def _np_trunk_backward(self, hs: list[np.ndarray], grad: np.ndarray, names: list[str]) -> None:
        """Backpropagate ``grad`` ``(M, B, width)`` (d loss / d the trunk's output) through the
        layers whose activations are ``hs``, writing each layer's weight and bias gradient."""
        for i in reversed(range(len(names))):
            h = hs[i + 1]
            # d tanh = 1 - tanh^2 (torch's tanh_backward); d relu = [output > 0] (threshold_backward).
            dz = grad * (np.float32(1.0) - h * h) if self._np_tanh else grad * (h > 0)
            np.matmul(dz.transpose(0, 2, 1), hs[i], out=self._np_grads[f"{names[i]}.weight"])
            dz.sum(axis=1, out=self._np_grads[f"{names[i]}.bias"])
            if i > 0:
                grad = np.matmul(dz, self._np_params[f"{names[i]}.weight"])

    def loss_and_backward(self, obs: Tensor, actions: Tensor, loss: LossWithGrads) -> dict[str, np.ndarray]:
        """One minibatch step's forward, loss and backward for every member, in numpy: each
        member's gradient is written into its row of the gradient buffer (every entry of it:
        no ``zero_grad`` needed). Computes what :meth:`evaluate_actions`, the loss and
        ``backward()`` compute, to float32 rounding (``tests/test_loss_grads.py``).

        Args:
            obs: ``(M, B, *obs_shape)`` observations.
            actions: ``(M, B)`` int64 (Categorical) or ``(M, B, d)`` float32 (Gaussian) stored actions.
            loss: maps the ``(M, B)`` log-probs, entropies and values to the named ``(M,)`` terms
                and their gradients (:data:`LossWithGrads`; ``algo.loss_grads``).

        Returns:
            The loss's terms.

        Raises:
            ValueError: :meth:`numpy_refusal` is not None.
        """
        reason = self.numpy_refusal()
        if reason:
            raise ValueError(f"no numpy fast path: {reason}")
        net, m, b = self.template, obs.shape[0], obs.shape[1]
        with torch.no_grad():
            if net.encoder is not None:
                obs = net.encoder(obs.reshape(m * b, *obs.shape[2:])).reshape(m, b, -1)
            x = obs.flatten(2) if obs.dim() > 3 else obs
            x = x.float().numpy()
        actor = self._np_trunk(x, self._layer_names["actor"])
        critic = actor if net.shared else self._np_trunk(x, self._layer_names["critic"])
        p = self._np_params
        head_in, value_in = actor[-1], critic[-1]
        out = np.matmul(head_in, p["policy_head.weight"].transpose(0, 2, 1))
        out += p["policy_head.bias"][:, None, :]
        value = np.matmul(value_in, p["value_head.weight"].transpose(0, 2, 1))[..., 0] + p["value_head.bias"]

        if net.continuous:  # DiagGaussian.log_prob_entropy, with the log std clamped
            log_std = p["log_std"]
            clamped = np.clip(log_std, np.float32(LOG_STD_MIN), np.float32(LOG_STD_MAX))
            inv_std = np.exp(-clamped)[:, None, :]
            z = (actions.numpy() - out) * inv_std
            logp = (np.float32(-0.5) * z * z - clamped[:, None, :] - np.float32(LOG_SQRT_2PI)).sum(-1)
            entropy = np.broadcast_to((np.float32(0.5 + LOG_SQRT_2PI) + clamped).sum(-1)[:, None], (m, b))
        else:  # Categorical.log_prob_entropy: one log-softmax
            shifted = out - out.max(-1, keepdims=True)
            logp_all = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            prob = np.exp(logp_all)
            entropy = -(prob * logp_all).sum(-1)
            index = actions.numpy()[..., None]
            logp = np.take_along_axis(logp_all, index, -1)[..., 0]

        terms, d_logp, d_value, d_entropy = loss(logp, entropy, value)

        g = self._np_grads
        if net.continuous:
            d_out = (d_logp[..., None] * z) * inv_std
            d_log_std = (d_logp[..., None] * (z * z - np.float32(1.0))).sum(1) + d_entropy.sum(1)[:, None]
            g["log_std"][...] = d_log_std * ((log_std >= LOG_STD_MIN) & (log_std <= LOG_STD_MAX))
        else:
            # d entropy / d log p_j = -(p_j + p_j log p_j); the chosen action adds d log p_a;
            # then the log-softmax backward: d logits = G - p * sum(G).
            grad_logp = -(prob + prob * logp_all) * d_entropy[..., None]
            np.put_along_axis(grad_logp, index, np.take_along_axis(grad_logp, index, -1) + d_logp[..., None], -1)
            d_out = grad_logp - prob * grad_logp.sum(-1, keepdims=True)
        np.matmul(d_out.transpose(0, 2, 1), head_in, out=g["policy_head.weight"])
        d_out.sum(axis=1, out=g["policy_head.bias"])
        g["value_head.weight"][...] = np.matmul(d_value[:, None, :], value_in)
        g["value_head.bias"][...] = d_value.sum(1, keepdims=True)
        d_actor = np.matmul(d_out, p["policy_head.weight"])
        d_critic = d_value[..., None] * p["value_head.weight"]
        if net.shared:
            self._np_trunk_backward(actor, d_actor + d_critic, self._layer_names["actor"])
        else:
            self._np_trunk_backward(actor, d_actor, self._layer_names["actor"])
            self._np_trunk_backward(critic, d_critic, self._layer_names["critic"])
        return terms
