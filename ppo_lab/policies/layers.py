"""Torch building blocks of the policies: orthogonal init, the MLP trunk, the Nature CNN trunk.

Initialization follows the 37 implementation details of PPO (Huang et al. 2022), detail 2:
orthogonal weights with gain sqrt(2) on hidden layers; zero biases. Image observations arrive as
uint8 ``(B, C, H, W)`` and are scaled by 1/255 inside the CNN (Atari detail 9), so the rollout
buffer can store uint8.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def layer_init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weight init with ``gain`` and constant bias (37 details, detail 2)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


#: The MLP's activations by name (``network.activation``).
TORCH_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class _NumpyTanh(torch.autograd.Function):
    """tanh with numpy's forward: ``y = tanh(x)`` written into a torch-allocated tensor, and
    torch's own backward (``aten::tanh_backward``: ``grad * (1 - y**2)`` from the saved output)."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        np.tanh(x.detach().contiguous().numpy(), out=y.numpy())
        ctx.save_for_backward(y)  # type: ignore[attr-defined]
        return y

    @staticmethod
    @once_differentiable  # y is numpy's, outside the graph: a second derivative would be silently 0
    def backward(ctx: object, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.tanh_backward(grad, y)


def numpy_tanh(x: Tensor) -> Tensor:
    """``torch.tanh`` with the forward computed by numpy, for CPU float tensors (other devices and
    dtypes: torch's); the backward is torch's ``tanh_backward`` on the saved output.

    Why: torch's CPU tanh forward kernel can be an order of magnitude slower than numpy's
    (measured 41 µs against 3.3 µs on ``(4, 64, 64)`` float32, and 118 µs against 14 µs on
    ``(4, 128, 64)``, torch 2.13 on an AVX-512 CPU, 1 thread), and the population's batched update
    calls it four times per minibatch on its largest tensors; its ``tanh_backward`` is as fast as
    numpy's three passes (and an output torch allocates, not numpy, spares the page faults of
    numpy's fresh large arrays). Values agree to float32 rounding (each within an ulp or two of
    the exact tanh), not bit for bit, which is why a solo run's forward (the reference) keeps
    ``torch.tanh``. Shapes and dtypes are those of ``x``.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return torch.tanh(x)
    return _NumpyTanh.apply(x)


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
        #: The activation's name: the numpy fast path (``FusedMLPPolicy``) reads it from here.
        self.activation_name = activation
        self.activation = TORCH_ACTIVATIONS[activation]

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.flatten(1) if obs.dim() > 2 else obs
        if not x.is_floating_point():  # e.g. uint8 RAM or byte features: their values, as float32
            x = x.float()
        for layer in self.layers:
            x = self.activation(F.linear(x, layer.weight, layer.bias))
        return x


class NatureCNN(nn.Module):
    """Nature DQN trunk (Mnih et al. 2015): uint8 ``(B, C, H, W)`` (or ``(B, H, W, C)`` with
    ``channels_last``) -> ``(B, hidden)`` features.

    Pixels are scaled by 1/255 here, so observations stay uint8 until they reach the network.
    """

    def __init__(self, in_channels: int, screen: tuple[int, int], hidden: int = 512,
                 channels_last: bool = False) -> None:
        super().__init__()
        #: Frames arrive ``(B, H, W, C)`` and are permuted here (the buffer keeps the env's layout).
        self.channels_last = channels_last
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
        if self.channels_last:
            obs = obs.permute(0, 3, 1, 2)
        return self.fc(self.convs(obs.float() / 255.0))
