"""Adam and global gradient clipping over one flat parameter buffer.

All parameters of the network become views into one contiguous tensor, and their gradients
views into another, so Adam's update and the global-norm clip are a handful of tensor ops per
minibatch instead of a loop over parameters. It computes exactly what ``torch.optim.Adam``
(no weight decay, no amsgrad) and ``torch.nn.utils.clip_grad_norm_`` compute (pinned by
``tests/test_optim.py``), and it avoids ``torch.optim``'s first-use import of ``torch._dynamo``
(about 1.5 s of a 100k-step CartPole run). 37 details: detail 3 (Adam eps 1e-5), detail 11
(global gradient clipping).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor, nn


class FlatAdam:
    """Adam (Kingma & Ba 2015) on a flat parameter buffer.

    Args:
        params: the parameters to optimize; they are re-pointed into one flat buffer (their
            values are kept). Call after moving the module to its device.
        lr: step size.
        betas: (beta1, beta2).
        eps: denominator epsilon (1e-5 for PPO; 37 details, detail 3).

    Raises:
        ValueError: no parameters, or parameters on several devices/dtypes.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("FlatAdam needs at least one parameter")
        kinds = {(p.device, p.dtype) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(f"FlatAdam needs parameters on one device and dtype, got {kinds}")
        first = self.params[0]
        total = sum(p.numel() for p in self.params)
        self.flat = torch.zeros(total, device=first.device, dtype=first.dtype)
        self.flat_grad = torch.zeros_like(self.flat)
        offset = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                self.flat[offset:offset + n].copy_(p.reshape(-1))
                p.data = self.flat[offset:offset + n].view_as(p)
                p.grad = self.flat_grad[offset:offset + n].view_as(p)
                offset += n
        self.lr, self.betas, self.eps = lr, betas, eps
        self.step_count = 0
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)

    def zero_grad(self) -> None:
        """Zero the gradients in place (backward then accumulates into the flat buffer)."""
        self.flat_grad.zero_()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Scale all gradients so their global L2 norm is at most ``max_norm``; returns the norm
        before clipping (``torch.nn.utils.clip_grad_norm_``'s formula, with its 1e-6)."""
        norm = torch.linalg.vector_norm(self.flat_grad)
        self.flat_grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter with the current ``lr``."""
        beta1, beta2 = self.betas
        self.step_count += 1
        bias1 = 1 - beta1**self.step_count
        bias2_sqrt = math.sqrt(1 - beta2**self.step_count)
        self.exp_avg.lerp_(self.flat_grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.flat_grad, self.flat_grad, value=1 - beta2)
        denom = (self.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, denom, value=-self.lr / bias1)

    def state_dict(self) -> dict[str, object]:
        """Moments, step count and hyperparameters (tensors and numbers only)."""
        return {"step": self.step_count, "exp_avg": self.exp_avg.clone(),
                "exp_avg_sq": self.exp_avg_sq.clone(), "lr": self.lr, "betas": self.betas, "eps": self.eps}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the saved moments do not match this parameter count.
        """
        exp_avg = state["exp_avg"]
        if not isinstance(exp_avg, Tensor) or exp_avg.shape != self.exp_avg.shape:
            raise ValueError(f"optimizer state for {getattr(exp_avg, 'shape', None)} parameters, "
                             f"this network has {tuple(self.exp_avg.shape)}")
        self.step_count = int(state["step"])  # type: ignore[arg-type]
        self.exp_avg.copy_(exp_avg)
        self.exp_avg_sq.copy_(state["exp_avg_sq"])  # type: ignore[arg-type]
        self.lr = float(state["lr"])  # type: ignore[arg-type]
