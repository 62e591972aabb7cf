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
from typing import Iterable, Optional, Sequence, Union

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

    def repoint(self, flat: Tensor, flat_grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
        """Move the parameters, gradients and moments into the given ``(P,)`` buffers (rows of a
        :class:`StackedAdam`), which must already hold their values."""
        self.flat, self.flat_grad, self.exp_avg, self.exp_avg_sq = flat, flat_grad, exp_avg, exp_avg_sq
        offset = 0
        for p in self.params:
            n = p.numel()
            p.data = flat[offset:offset + n].view_as(p)
            p.grad = flat_grad[offset:offset + n].view_as(p)
            offset += n

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


Rows = Union[float, Sequence[float]]


class StackedAdam:
    """:class:`FlatAdam` for ``M`` networks of one architecture at once: row ``m`` of one
    ``(M, P)`` buffer is member ``m``'s flat parameters, so one Adam update (and one per-row
    gradient clip) serves every member.

    Stacking re-points each member's :class:`FlatAdam` (its parameters, gradients and moments
    become views of row ``m``), so each member's network, ``state_dict()`` and checkpoint read
    the shared buffers unchanged. Each row keeps its own step count, learning rate and clip
    norm: a member that does not step (``active`` False: past its ``target_kl``, or diverged)
    keeps its moments, parameters and step count, exactly as its solo run would.

    Args:
        members: each member's :class:`FlatAdam` (same parameter count, device and dtype; their
            values, moments and step counts are kept).

    Raises:
        ValueError: the members' parameter counts, devices, dtypes, betas or eps differ.
    """

    def __init__(self, members: Sequence[FlatAdam]) -> None:
        self.members = list(members)
        first = self.members[0]
        kinds = {(m.flat.numel(), m.flat.device, m.flat.dtype, m.betas, m.eps) for m in self.members}
        if len(kinds) != 1:
            raise ValueError(f"StackedAdam needs members of one parameter count, device, dtype, betas and eps; got {kinds}")
        self.betas, self.eps = first.betas, first.eps
        self.flat = torch.stack([m.flat for m in self.members])
        self.flat_grad = torch.zeros_like(self.flat)
        self.exp_avg = torch.stack([m.exp_avg for m in self.members])
        self.exp_avg_sq = torch.stack([m.exp_avg_sq for m in self.members])
        for row, member in enumerate(self.members):
            member.repoint(self.flat[row], self.flat_grad[row], self.exp_avg[row], self.exp_avg_sq[row])

    def zero_grad(self) -> None:
        """Zero every member's gradients in place."""
        self.flat_grad.zero_()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: Rows) -> Tensor:
        """Scale each row's gradient to a global L2 norm of at most its ``max_norm`` (a float for
        every row, or one per row); returns the ``(M,)`` norms before clipping
        (``torch.nn.utils.clip_grad_norm_``'s formula per member; 37 details, detail 11)."""
        norm = torch.linalg.vector_norm(self.flat_grad, dim=1)
        limit = max_norm if isinstance(max_norm, float) else torch.tensor(max_norm, dtype=norm.dtype, device=norm.device)
        self.flat_grad.mul_(torch.clamp(limit / (norm + 1e-6), max=1.0).unsqueeze(1))
        return norm

    @torch.no_grad()
    def step(self, active: Optional[Sequence[bool]] = None) -> None:
        """One Adam update of every row (``active`` None) or of the rows where ``active`` is True,
        each with its member's current ``lr`` and its own step count."""
        beta1, beta2 = self.betas
        rows = range(len(self.members)) if active is None else [i for i, a in enumerate(active) if a]
        for i in rows:
            self.members[i].step_count += 1
        steps = {self.members[i].step_count for i in rows}
        lrs = {self.members[i].lr for i in rows}
        if len(rows) == len(self.members) and len(steps) == 1 and len(lrs) == 1:
            # Every row alike (always so for one member): FlatAdam's scalar formula.
            (step,), (lr,) = steps, lrs
            bias1, bias2_sqrt = 1 - beta1**step, math.sqrt(1 - beta2**step)
            self.exp_avg.lerp_(self.flat_grad, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(self.flat_grad, self.flat_grad, value=1 - beta2)
            denom = (self.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
            self.flat.addcdiv_(self.exp_avg, denom, value=-lr / bias1)
            return
        # Rows differ: per-row bias corrections and step sizes; rows left out keep everything.
        counts = [self.members[i].step_count for i in range(len(self.members))]
        column = lambda values: torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device).unsqueeze(1)  # noqa: E731
        step_size = column([-m.lr / (1 - beta1**max(c, 1)) for m, c in zip(self.members, counts)])
        bias2_sqrt = column([math.sqrt(1 - beta2**max(c, 1)) for c in counts])
        exp_avg = torch.lerp(self.exp_avg, self.flat_grad, 1 - beta1)
        exp_avg_sq = (self.exp_avg_sq * beta2).addcmul_(self.flat_grad, self.flat_grad, value=1 - beta2)
        flat = torch.addcdiv(self.flat, exp_avg * step_size, (exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps))
        if active is not None and len(rows) < len(self.members):
            keep = torch.tensor([bool(a) for a in active], device=self.flat.device).unsqueeze(1)
            exp_avg, exp_avg_sq = torch.where(keep, exp_avg, self.exp_avg), torch.where(keep, exp_avg_sq, self.exp_avg_sq)
            flat = torch.where(keep, flat, self.flat)
        self.exp_avg.copy_(exp_avg)
        self.exp_avg_sq.copy_(exp_avg_sq)
        self.flat.copy_(flat)
