"""Cost of one PPO gradient step for a population of M members against M solo steps.

    python benchmarks/population_update.py              # minibatch 64/128/256, M = 1/8/16
    python benchmarks/population_update.py --threads 2

The groundwork for batched population sweeps (``hydra/launcher=population`` trains its members one
after another today): it measures, side by side in one process, the project's solo step
(``ActorCritic.evaluate_actions`` -> ``ppo_losses`` -> ``FlatAdam`` with global clipping) and
two batched forms of the same step over M stacked copies of CartPole's 64-64 tanh actor-critic:

* ``vmap``: ``torch.func.functional_call`` of the project's own network under ``torch.func.vmap``
  over stacked parameters (the PyTorch "model ensembling" recipe), one backward, per-member
  gradient clipping and Adam on an ``(M, P)`` buffer;
* ``bmm``: the same network written as explicit batched layers (``torch.baddbmm`` on ``(M, in, out)``
  weights), the same loss and optimizer.

Prints ms per step and the speed-up per member (M solo steps / one population step). No
assertion: figures only (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import gymnasium as gym
import torch
from torch.func import functional_call, vmap

from ppo_lab.algo.losses import ppo_losses, total_loss
from ppo_lab.algo.optim import FlatAdam
from ppo_lab.config import ActionType
from ppo_lab.policies import ActorCritic

OBS, ACT = gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2)


def batch(M: int, B: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"obs": torch.randn(M, B, 4, generator=g), "act": torch.randint(0, 2, (M, B), generator=g),
            "lp": torch.randn(M, B, generator=g) * 0.1 - 0.7, "adv": torch.randn(M, B, generator=g),
            "v": torch.randn(M, B, generator=g), "ret": torch.randn(M, B, generator=g)}


def loss_of(logp, ent, value, d, clip):
    terms = ppo_losses(logp, d["lp"], d["adv"], value, d["v"], d["ret"], ent, clip, True, True, None)
    return total_loss(terms, 0.01, 0.5)


def solo_step(B: int) -> Callable[[], None]:
    net = ActorCritic(OBS, ACT, ActionType.discrete)
    opt = FlatAdam(net.parameters(), lr=2.5e-4, eps=1e-5)
    d = {k: v[0] for k, v in batch(1, B).items()}

    def step() -> None:
        logp, ent, value = net.evaluate_actions(d["obs"], d["act"])
        loss = loss_of(logp, ent, value, d, 0.2)
        opt.zero_grad()
        loss.backward()
        opt.clip_grad_norm_(0.5)
        opt.step()
    return step


class StackedAdam:
    """Adam with per-member global clipping on an ``(M, P)`` parameter buffer."""

    def __init__(self, flat: torch.Tensor, lr: float) -> None:
        self.flat, self.t = flat, 0
        self.m, self.v = torch.zeros_like(flat), torch.zeros_like(flat)
        self.lr = torch.full((flat.shape[0], 1), lr)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, max_norm: float) -> None:
        norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
        grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        self.t += 1
        self.m.lerp_(grad, 0.1)
        self.v.mul_(0.999).addcmul_(grad, grad, value=0.001)
        denom = (self.v.sqrt() / math.sqrt(1 - 0.999 ** self.t)).add_(1e-5)
        self.flat.addcdiv_(self.m, denom * (1 - 0.9 ** self.t) / self.lr, value=-1.0)


def vmap_step(M: int, B: int) -> Callable[[], None]:
    nets = [ActorCritic(OBS, ACT, ActionType.discrete) for _ in range(M)]
    template = nets[0]
    names, shapes = zip(*[(n, p.shape) for n, p in template.named_parameters()])
    sizes = [s.numel() for s in shapes]
    flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in n.parameters()]) for n in nets]).requires_grad_(True)
    opt, d, clip = StackedAdam(flat.data, 2.5e-4), batch(M, B), torch.full((M,), 0.2)

    def member_loss(params, obs, act, lp, adv, v, ret, c):
        logits, value = functional_call(template, params, (obs,))
        logp, ent = template.dist.log_prob_entropy(logits, act)
        return loss_of(logp, ent, value, {"lp": lp, "adv": adv, "v": v, "ret": ret}, c)

    def step() -> None:
        params = {n: t.view(M, *s) for n, t, s in zip(names, flat.split(sizes, dim=1), shapes)}
        losses = vmap(member_loss)(params, d["obs"], d["act"], d["lp"], d["adv"], d["v"], d["ret"], clip)
        flat.grad = None
        losses.sum().backward()
        opt.step(flat.grad, 0.5)
    return step


def bmm_step(M: int, B: int) -> Callable[[], None]:
    torch.manual_seed(0)
    dims = [(4, 64), (64, 64)]
    ws = [torch.randn(M, 2, i, o) * 0.1 for i, o in dims]  # [actor, critic] per layer
    heads = [torch.randn(M, 64, 2) * 0.01, torch.randn(M, 64, 1)]
    tensors = [*ws, *heads, *[torch.zeros(M, 2, o) for _, o in dims], torch.zeros(M, 2), torch.zeros(M, 1)]
    sizes = [t[0].numel() for t in tensors]
    flat = torch.cat([t.reshape(M, -1) for t in tensors], dim=1).requires_grad_(True)
    opt, d, clip = StackedAdam(flat.data, 2.5e-4), batch(M, B), torch.full((M, 1), 0.2)
    shapes = [t.shape[1:] for t in tensors]

    def step() -> None:
        w1, w2, hp, hv, b1, b2, bp, bv = (t.view(M, *s) for t, s in zip(flat.split(sizes, dim=1), shapes))
        x_a = torch.tanh(torch.baddbmm(b1[:, 0:1], d["obs"], w1[:, 0]))
        x_c = torch.tanh(torch.baddbmm(b1[:, 1:2], d["obs"], w1[:, 1]))
        x_a = torch.tanh(torch.baddbmm(b2[:, 0:1], x_a, w2[:, 0]))
        x_c = torch.tanh(torch.baddbmm(b2[:, 1:2], x_c, w2[:, 1]))
        logits = torch.baddbmm(bp.unsqueeze(1), x_a, hp)
        value = torch.baddbmm(bv.unsqueeze(1), x_c, hv).squeeze(-1)
        logp_all = torch.log_softmax(logits, -1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        logp = logp_all.gather(-1, d["act"].unsqueeze(-1)).squeeze(-1)
        ratio = (logp - d["lp"]).exp()
        adv = (d["adv"] - d["adv"].mean(1, keepdim=True)) / (d["adv"].std(1, keepdim=True) + 1e-8)
        pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean(1)
        v_clipped = d["v"] + torch.clamp(value - d["v"], -clip, clip)
        vl = 0.5 * torch.max((value - d["ret"]) ** 2, (v_clipped - d["ret"]) ** 2).mean(1)
        loss = (pg - 0.01 * ent.mean(1) + 0.5 * vl).sum()
        flat.grad = None
        loss.backward()
        opt.step(flat.grad, 0.5)
    return step


def timed(step: Callable[[], None], iters: int) -> float:
    for _ in range(10):
        step()
    tic = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - tic) / iters * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); ms per gradient step\n")
    print("| minibatch | M | solo ms | vmap ms (per member) | vmap speed-up | bmm ms (per member) | bmm speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for B in (64, 128, 256):
        solo = timed(solo_step(B), args.iters)
        for M in (1, 8, 16):
            v, b = timed(vmap_step(M, B), args.iters), timed(bmm_step(M, B), args.iters)
            print(f"| {B} | {M} | {solo:.3f} | {v:.3f} ({v / M:.3f}) | {solo * M / v:.2f}x "
                  f"| {b:.3f} ({b / M:.3f}) | {solo * M / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
