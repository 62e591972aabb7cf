"""Many copies of the project's MLP actor-critic as one batched computation (population sweeps).

``M`` members of one architecture keep their parameters in the rows of one ``(M, P)`` buffer
(``algo.optim.StackedAdam``). :class:`StackedActorCritic` views each parameter of all members at
once, ``(M, *shape)`` (a strided view of the buffer: no copy), and runs the members' forward
passes as batched matrix products, ``torch.baddbmm`` on ``(M, B, in)`` inputs and ``(M, out, in)``
weights: one call per layer for the whole population, where ``M`` separate runs make ``M``.
Gradients land in the buffer's gradient rows, where the stacked Adam reads them.

Why batched layers rather than ``torch.func.vmap(functional_call)``: on these small networks
the cost of a step is per-call overhead, and ``vmap`` adds its own (``docs/population.md``).

It is a fast path derived from :class:`~ppo_lab.policies.actor_critic.ActorCritic` (habit 14):
it reads the module's own layers, activation, heads and distribution, refuses any network it
does not know (:func:`stack_refusal`), and is parity-tested against the module's forward
(``tests/test_population.py``).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ppo_lab.policies.distributions import LOG_STD_MAX, LOG_STD_MIN
from ppo_lab.policies.layers import MLP, numpy_tanh


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


class StackedActorCritic:
    """The batched forward of ``M`` :class:`ActorCritic` MLPs whose parameters are rows of one buffer.

    Args:
        networks: the members' networks (one architecture; :func:`stack_refusal` is None for each).
        flat, flat_grad: the ``(M, P)`` parameter and gradient buffers (``StackedAdam``) whose
            row ``m`` holds ``networks[m]``'s parameters in ``named_parameters()`` order.

    Raises:
        ValueError: a network cannot be stacked, or the networks differ in architecture.
    """

    def __init__(self, networks: Sequence[nn.Module], flat: Tensor, flat_grad: Tensor) -> None:
        for net in networks:
            reason = stack_refusal(net)
            if reason:
                raise ValueError(f"cannot stack this network: {reason}")
        shapes = [[(n, tuple(p.shape)) for n, p in net.named_parameters()] for net in networks]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("the population's networks differ in architecture")
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
        self.actor_layers = [self._linear(f"actor_trunk.layers.{i}") for i in range(len(net.actor_trunk.layers))]
        critic = "actor_trunk" if net.shared else "critic_trunk"
        self.critic_layers = [self._linear(f"{critic}.layers.{i}") for i in range(len(net.critic_trunk.layers))]
        self.policy_head, self.value_head = self._linear("policy_head"), self._linear("value_head")

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
