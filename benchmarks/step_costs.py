"""Where ppo_lab's per-step time goes on CPU: microseconds per rollout step and per minibatch.

Prints, for the CartPole benchmark network (separate 64-64 tanh actor and critic, 2 actions):

* rollout: one policy step for 4 envs through the fused numpy snapshot the collector uses
  (``ActorCritic.inference_policy().act``: forward, sampling, log-prob), and, for reference,
  the network's eager torch forward alone (no sampling);
* update: one minibatch of 128 samples, cumulatively: forward (``evaluate_actions``), + PPO loss
  terms, + backward, + gradient clip and Adam (``FlatAdam``), i.e. the trainer's inner loop;
* single ops on a ``(128, 64)`` float32 activation: ``torch.tanh``, ``torch.sigmoid``,
  ``torch.relu`` and ``numpy.tanh``, to show what the activation itself costs.

Usage::

    python benchmarks/step_costs.py                # ~20 s
    python benchmarks/step_costs.py --iters 50     # smoke test

All figures are medians of 5 timing blocks of ``--iters`` calls each, 1 torch thread. They are
machine-dependent: compare rows within one invocation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch

from ppo_lab.config import ActionType
from ppo_lab.algo.losses import ppo_losses, total_loss
from ppo_lab.policies import ActorCritic
from ppo_lab.algo.optim import FlatAdam


def per_call_us(fn: Callable[[], Any], iters: int, blocks: int = 5) -> float:
    """Median over ``blocks`` of the mean microseconds per call of ``fn`` (after a warm-up)."""
    for _ in range(max(10, iters // 10)):
        fn()
    times = []
    for _ in range(blocks):
        tic = time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((time.perf_counter() - tic) / iters * 1e6)
    return statistics.median(times)


def measure(iters: int, seed: int = 0) -> dict[str, float]:
    """Microseconds per call of each measured piece (see the module docstring).

    Args:
        iters: calls per timing block.
        seed: torch seed for the network and data.

    Returns:
        ``{name: microseconds}``.
    """
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    net = ActorCritic(obs_space, gym.spaces.Discrete(2), ActionType.discrete, "mlp", False, (64, 64), "tanh")
    optimizer = FlatAdam(net.parameters(), 2.5e-4, eps=1e-5)
    out: dict[str, float] = {}

    step_obs = torch.randn(4, 4)
    step_obs_np, rng = step_obs.numpy(), np.random.default_rng(seed)
    policy = net.inference_policy()
    out["rollout step: fused numpy snapshot .act (4 envs)"] = per_call_us(
        lambda: policy.act(step_obs_np, rng), iters * 10)
    with torch.inference_mode():
        out["rollout step: torch forward only, for reference (4 envs)"] = per_call_us(
            lambda: net(step_obs), iters * 10)

    b = 128
    obs, actions = torch.randn(b, 4), torch.randint(0, 2, (b,))
    old_logprob, advantages = torch.full((b,), -0.69), torch.randn(b)
    old_values, returns = torch.randn(b), torch.randn(b)

    def forward() -> Any:
        return net.evaluate_actions(obs, actions)

    def loss() -> torch.Tensor:
        logprob, entropy, value = forward()
        terms = ppo_losses(logprob, old_logprob, advantages, value, old_values, returns, entropy, 0.2,
                           clip_vloss=False, norm_adv=True)
        return total_loss(terms, 0.01, 0.5)

    def backward() -> None:
        optimizer.zero_grad()
        loss().backward()

    def full_step() -> None:
        backward()
        optimizer.clip_grad_norm_(0.5)
        optimizer.step()

    out["minibatch 128: forward"] = per_call_us(forward, iters)
    out["minibatch 128: + loss terms"] = per_call_us(loss, iters)
    out["minibatch 128: + backward"] = per_call_us(backward, iters)
    out["minibatch 128: + clip and Adam (full step)"] = per_call_us(full_step, iters)

    x = torch.randn(b, 64)
    xn = x.numpy()
    out["op (128, 64): torch.tanh"] = per_call_us(lambda: torch.tanh(x), iters * 5)
    out["op (128, 64): torch.sigmoid"] = per_call_us(lambda: torch.sigmoid(x), iters * 5)
    out["op (128, 64): torch.relu"] = per_call_us(lambda: torch.relu(x), iters * 5)
    out["op (128, 64): numpy.tanh"] = per_call_us(lambda: np.tanh(xn), iters * 5)
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    """Measure and print a Markdown table.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        The measured ``{name: microseconds}``.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=2000, help="calls per timing block")
    args = p.parse_args(argv)
    out = measure(args.iters)
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 torch thread, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| what | µs per call |\n|---|---:|")
    for name, us in out.items():
        print(f"| {name} | {us:.1f} |")
    return out


if __name__ == "__main__":
    main()
