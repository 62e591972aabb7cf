"""The PPO training loop: collect -> advantages -> update epochs -> log -> evaluate/checkpoint.

Read top to bottom like CleanRL's ppo.py. Every one of the implementation details it uses is a
named step here or in the module it calls (details table: ``docs/details.md``). The Trainer owns
the optimizer and the counters; everything else it is handed (env, network, sinks, callbacks)
and the checkpoint composes each component's own ``state_dict()``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from ppo_lab.algo.advantages import compute_gae
from ppo_lab.algo.optim import FlatAdam
from ppo_lab.algo.schedules import linear_anneal
from ppo_lab.config import TrainConfig
from ppo_lab.envs import EnvStateSnapshot, NormalizationStats, snapshot_fits
from ppo_lab.io.checkpoint import load_checkpoint, load_components, save_checkpoint, state_of
from ppo_lab.training.callbacks import Callback, RunView
from ppo_lab.training.diagnostics import Diagnostics
from ppo_lab.training.errors import TrainingDiverged, TrainingInterrupted
from ppo_lab.training.evaluation import evaluate_policy
from ppo_lab.training.population import Population
from ppo_lab.training.rollout import RolloutBuffer, RolloutCollector
from ppo_lab.training.runtime import GeneratorState, GlobalRNG

LOG = logging.getLogger("ppo_lab")

@dataclass
class Rollout:
    """One member's phases 1-3: the filled buffer, the episodes that ended in it, GAE
    ``advantages`` and ``returns`` ``(num_steps, num_envs)``, and the scheduled ``lr`` and
    ``clip_coef`` of this update."""

    buf: RolloutBuffer
    episodes: list[tuple[float, int]]
    advantages: np.ndarray
    returns: np.ndarray
    lr: float
    clip_coef: float


def max_entropy(action_space: gym.Space) -> Optional[float]:
    """Entropy of the uniform policy over a discrete space (summed over MultiDiscrete
    components and MultiBinary bits); None for continuous spaces. With action masks the
    uniform policy over the valid actions has less: this is then an upper bound."""
    if isinstance(action_space, gym.spaces.Discrete):
        return math.log(action_space.n)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return float(np.log(action_space.nvec).sum())
    if isinstance(action_space, gym.spaces.MultiBinary):
        return float(action_space.n * math.log(2.0))
    return None


class Trainer:
    """PPO-clip (or PPO-penalty) over a vector env.

    Args:
        cfg: the validated run config.
        envs: the training vector env (``envs.make_vec_env``).
        network: the actor-critic (protocol: ``policies/protocol.py``).
        sinks: metric sinks (``io.sinks.Sinks``).
        run_dir: the run's dir; checkpoints go to ``run_dir/checkpoints``.
        device: where the network and the update's tensors live (the rollout buffer is numpy
            on the host and goes to the device once per update).
        run_config: the resolved config as plain data, stored in every checkpoint.
        callbacks: ``{key: callback}`` (``training/callbacks.py``), called in order.
        exact_env_state: checkpoint the env's whole state and the collector's position (the env
            family's ``exact_state``: classic control), so a resume continues the same episodes.
        resume_state: a loaded checkpoint to continue from (``io/checkpoint.py``).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        envs: gym.vector.VectorEnv,
        network: torch.nn.Module,
        sinks: Any,
        run_dir: Path,
        device: torch.device,
        run_config: dict[str, Any],
        callbacks: Optional[dict[str, Callback]] = None,
        exact_env_state: bool = False,
        resume_state: Optional[dict[str, Any]] = None,
    ) -> None:
        self.cfg, self.envs, self.network, self.sinks = cfg, envs, network, sinks
        self.run_dir, self.device, self.run_config = Path(run_dir), device, run_config
        self.callbacks = dict(callbacks or {})
        self.ckpt_dir = self.run_dir / "checkpoints"
        a = cfg.agent
        self.num_iterations = cfg.total_timesteps // a.batch_size
        # 37 details, detail 3: Adam with eps 1e-5 (on one flat parameter buffer).
        self.optimizer = FlatAdam(network.parameters(), lr=a.learning_rate, eps=a.adam_eps)
        if cfg.compile:
            # After FlatAdam re-pointed the parameters: the compiled graph reads the flat buffer.
            network.compile(dynamic=True)
        self.global_step, self.iteration = 0, 0
        self.kl_beta = a.kl_beta
        self.best_eval_return = -math.inf
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.stopped_by: Optional[str] = None
        #: The population this member trains in (``training/population.py``); a solo run makes its own.
        self.population: Any = None
        #: The minibatch order's generator: torch's global state after the network's init, so
        #: it draws what a run alone in its process would (and members do not share one).
        self.generator = torch.Generator(device="cpu")
        self.generator.set_state(torch.get_rng_state())
        self.start_time, self.start_step, self.sps = time.perf_counter(), 0, 0.0
        self.timing = {"rollout": 0.0, "update": 0.0, "log": 0.0}
        self.collector = RolloutCollector(envs, a.num_steps, cfg.seed, a.action_masking)
        self.normalization = NormalizationStats(envs)
        self.exact_env_state = exact_env_state
        self.diagnostics = Diagnostics(kl_reference=a.target_kl or a.kl_target,
                                       max_entropy=max_entropy(envs.single_action_space))
        if resume_state is not None:
            self._restore(resume_state)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train until ``total_timesteps`` (or a callback's stop); returns the final evaluation
        metrics (``eval/...``) and ``stopped_by`` (the callback's key, if one stopped training).

        A solo run is a population of one: this trains ``Population([self])``
        (``training/population.py``), the one training loop.

        Raises:
            TrainingDiverged: non-finite loss or parameters (the last checkpoint is left intact).
            TrainingInterrupted: SIGTERM/SIGINT; a checkpoint was written first.
        """
        population = self.own_population()
        if len(population.members) != 1:
            raise RuntimeError("this trainer is a member of a population: call the population's fit()")
        (outcome,) = population.fit()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    # ------------------------------------------------------------------ phases (one member)
    def own_population(self) -> Population:
        """The population this member trains in; a solo run's own population of one, made once."""
        if self.population is None:
            Population([self])  # sets self.population
        return self.population

    def begin(self) -> None:
        """Before the first round: start the clocks; tell the callbacks."""
        self.start_time = time.perf_counter()
        self.start_step = self.global_step
        self._notify("on_training_start")

    def running(self) -> bool:
        """Whether this member trains another round (updates left, no callback's stop)."""
        return self.iteration < self.num_iterations and self.stopped_by is None

    def schedule(self) -> tuple[float, float]:
        """Phase 1 of the next update: linear annealing of lr and clip_coef (detail 4); returns
        both (the optimizer takes the lr). Phase 2, the rollout, is the population's
        (``training/rollout.collect_rollouts``: ``num_steps`` vector steps, detail 1)."""
        return self._schedules(self.iteration + 1)

    def advantages(self, collected: tuple[RolloutBuffer, list[tuple[float, int]]], lr: float,
                   clip_coef: float) -> Rollout:
        """Phase 3 after this member's rollout: count its steps; GAE with bootstrap on
        truncation (detail 5)."""
        a = self.cfg.agent
        buf, episodes = collected
        self.global_step += a.batch_size
        self.iteration += 1
        tic = time.perf_counter()
        advantages, returns = compute_gae(
            buf.rewards, buf.values, buf.next_values(),
            buf.terminated, buf.truncated, a.gamma, a.gae_lambda,
        )
        self.timing["update"] += time.perf_counter() - tic
        return Rollout(buf, episodes, advantages, returns, lr, clip_coef)

    def after_update(self, stats: dict[str, float], rollout: Rollout) -> None:
        """Phases 5-6 after the update (4, the population's): log, callbacks, evaluate, checkpoint."""
        tic = time.perf_counter()
        self.sps = (self.global_step - self.start_step) / (tic - self.start_time)
        metrics = self._log(stats, rollout.episodes, rollout.lr, rollout.clip_coef, self.sps,
                            elapsed=tic - self.start_time)
        self.timing["log"] += time.perf_counter() - tic
        self._notify("on_update_end", metrics)
        if self.cfg.eval_interval and self.iteration % self.cfg.eval_interval == 0:
            self.evaluate()
        if self.iteration % self.cfg.checkpoint_interval == 0:
            self.save(f"update_{self.iteration:06d}.pt")
        if self.stopped_by is not None:
            LOG.info("callbacks.%s asked to stop at update %d (global_step %d)",
                     self.stopped_by, self.iteration, self.global_step)

    def finish(self) -> dict[str, float]:
        """After the last round: the final evaluation, ``final.pt``, the summary; tell the callbacks."""
        final = self.evaluate(final=True)
        self.save("final.pt")
        final["time/wall_s"] = time.perf_counter() - self.start_time
        final.update(self.time_breakdown())
        if self.stopped_by is not None:
            final["stopped_by"] = self.stopped_by
        self.sinks.summary(final)
        self._notify("on_training_end", final)
        return final

    def time_breakdown(self) -> dict[str, float]:
        """Cumulative seconds of this process's training loop by phase: ``time/env_s`` (inside
        ``envs.step``), ``time/inference_s`` (the rest of the rollout: policy forward, sampling,
        copies), ``time/update_s`` (GAE + gradient epochs), ``time/log_s``. In a population the
        rollout and the update are this member's equal share of the lockstep rollout and of
        the batched update."""
        env = self.collector.env_seconds
        return {"time/env_s": env, "time/inference_s": self.timing["rollout"] - env,
                "time/update_s": self.timing["update"], "time/log_s": self.timing["log"]}

    def _schedules(self, iteration: int) -> tuple[float, float]:
        a = self.cfg.agent
        lr = linear_anneal(a.learning_rate, iteration, self.num_iterations) if a.anneal_lr else a.learning_rate
        clip = linear_anneal(a.clip_coef, iteration, self.num_iterations) if a.anneal_clip else a.clip_coef
        self.optimizer.lr = lr
        return lr, clip

    def _update(
        self, buf: RolloutBuffer, advantages: np.ndarray, returns: np.ndarray, clip_coef: float
    ) -> dict[str, float]:
        """Phase 4 alone: this member's update on a collected rollout (its population's
        ``update``). Raises :class:`TrainingDiverged` where the population reports it."""
        population = self.own_population()
        row = population.members.index(self)
        lr = self.optimizer.lr
        result = population.update({row: Rollout(buf, [], advantages, returns, lr, clip_coef)})[row]
        if isinstance(result, BaseException):
            raise result
        return result

    def check_finite(self, stats: dict[str, float]) -> None:
        """Raise :class:`TrainingDiverged` when an update's loss terms or this member's
        parameters are not finite (naming the update, the quantity and the intact checkpoint)."""
        for key in ("loss", "policy_loss", "value_loss", "entropy", "grad_norm"):
            if not math.isfinite(stats.get(key, 0.0)):
                raise TrainingDiverged(
                    f"update {self.iteration} (global_step {self.global_step}): train/{key} is "
                    f"{stats[key]}; stopping. The last good checkpoint in {self.ckpt_dir} is intact."
                )
        if torch.isfinite(self.optimizer.flat).all():
            return
        for name, param in self.network.named_parameters():
            if not torch.isfinite(param).all():
                raise TrainingDiverged(
                    f"update {self.iteration} (global_step {self.global_step}): parameter {name} "
                    f"is not finite; stopping. The last good checkpoint in {self.ckpt_dir} is intact."
                )

    def _log(
        self, stats: dict[str, float], episodes: list[tuple[float, int]], lr: float, clip: float,
        sps: float, elapsed: float,
    ) -> dict[str, Any]:
        metrics: dict[str, Any] = {f"train/{k}": v for k, v in stats.items()}
        log_std = (stats["log_std_min"], stats["log_std_max"]) if "log_std_min" in stats else None
        for name, message in self.diagnostics.check(stats, self.iteration / self.num_iterations, log_std).items():
            LOG.warning("update %d (global_step %d): %s", self.iteration, self.global_step, message)
            metrics[f"diagnostics/{name}"] = 1.0
        metrics.update({"train/learning_rate": lr, "train/clip_coef": clip, "time/sps": sps,
                        "time/elapsed_s": elapsed, "train/update": self.iteration})
        if episodes:
            returns = [r for r, _ in episodes]
            self.recent_returns.extend(returns)
            metrics["charts/episodic_return"] = float(np.mean(returns))
            metrics["charts/episodic_length"] = float(np.mean([n for _, n in episodes]))
            metrics["charts/episodes"] = len(episodes)
        if self.recent_returns:
            metrics["charts/episodic_return_last20"] = float(np.mean(self.recent_returns))
        self.sinks.log(metrics, self.global_step)
        return metrics

    def recent_return(self) -> str:
        """The mean of the last 20 training returns, for the progress bar ("-" before any)."""
        return f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"

    # ------------------------------------------------------------------ callbacks
    def run_view(self) -> RunView:
        """What callbacks see: counters, config and snapshots (never the live components)."""
        return RunView(cfg=self.cfg, run_dir=self.run_dir, global_step=self.global_step,
                       iteration=self.iteration, num_iterations=self.num_iterations,
                       _policy=self.network.inference_policy, _normalization=self.normalization.numpy,
                       _log=self.sinks.log)

    def _notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback; a True return asks to stop (the first one is kept)."""
        if not self.callbacks:
            return
        view = self.run_view()
        for key, callback in self.callbacks.items():
            if getattr(callback, hook)(view, *args) is True and self.stopped_by is None:
                self.stopped_by = key

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, final: bool = False) -> dict[str, float]:
        """Run ``eval_episodes`` episodes with frozen normalization; log ``eval/...``; keep
        ``best.pt``; tell the callbacks (their stop requests count only before the final one)."""
        results = evaluate_policy(
            self.network.inference_policy(), self.cfg.env, self.cfg.eval_episodes, self.cfg.eval_seed,
            self.cfg.eval_deterministic, self.normalization.numpy(),
            action_masking=self.cfg.agent.action_masking,
        )
        returns = np.array([r for r, _ in results])
        metrics = {
            "eval/episodic_return": float(returns.mean()),
            "eval/episodic_return_std": float(returns.std()),
            "eval/episodic_length": float(np.mean([n for _, n in results])),
        }
        self.sinks.log(metrics, self.global_step)
        if metrics["eval/episodic_return"] > self.best_eval_return:
            self.best_eval_return = metrics["eval/episodic_return"]
            self.save("best.pt")
        self._notify("on_eval_end", metrics)
        return {**metrics, "eval/best_episodic_return": self.best_eval_return,
                "global_step": float(self.global_step)}

    # ------------------------------------------------------------------ checkpoints
    def components(self) -> dict[str, Any]:
        """The stateful parts a checkpoint holds, each with ``state_dict()`` / ``load_state_dict()``.
        The env's whole state and the collector's position only where the family allows exact
        state (classic control); other families restart their episodes on resume."""
        parts: dict[str, Any] = {"model": self.network, "optimizer": self.optimizer,
                                 "normalization": self.normalization, "rng": GlobalRNG(),
                                 "minibatch_rng": GeneratorState(self.generator), "sinks": self.sinks}
        if self.exact_env_state:
            parts.update(collector=self.collector, env_state=EnvStateSnapshot(self.envs))
        return parts

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: the components' states, the counters, the schedules'
        position (update count), the KL-penalty beta, the best eval return, the last-20 training
        returns and the run's config."""
        return {
            "collector": None, "env_state": None,  # present, and None, where the family has no exact state
            **state_of(self.components()),
            "global_step": self.global_step,
            "iteration": self.iteration,
            "kl_beta": self.kl_beta,
            "best_eval_return": self.best_eval_return,
            "recent_returns": torch.tensor(list(self.recent_returns), dtype=torch.float64),
            "config": self.run_config,
        }

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>`` atomically; prune periodic checkpoints beyond ``keep_last``."""
        path = save_checkpoint(self.state_dict(), self.ckpt_dir / name)
        periodic = sorted(self.ckpt_dir.glob("update_*.pt"))
        for old in periodic[: -self.cfg.keep_last]:
            old.unlink()
        return path

    def _restore(self, state: dict[str, Any]) -> None:
        parts = self.components()
        parts.pop("sinks")  # sinks took their state when they were built (``build_sinks``)
        if state.get("env_state") is not None and not snapshot_fits(self.envs, state["env_state"]):
            LOG.warning("the checkpoint's env state was taken of another wrapper stack (a checkpoint of an "
                        "older ppo_lab): resuming with fresh episodes, as for envs without exact state")
            state = {**state, "env_state": None}
        if state.get("env_state") is None:
            parts.pop("collector", None)
            parts.pop("env_state", None)
        load_components(parts, state)
        if state.get("minibatch_rng") is None:  # older checkpoints: the order came from torch's global generator
            self.generator.set_state(state["rng"]["torch"])
        self.global_step, self.iteration = int(state["global_step"]), int(state["iteration"])
        self.kl_beta = float(state["kl_beta"])
        self.best_eval_return = float(state["best_eval_return"])
        self.recent_returns.extend(state.get("recent_returns", torch.zeros(0)).tolist())
        if "collector" not in parts:  # fresh episodes, but not a replay of the run's first resets
            self.collector.reset(seed=self.cfg.seed + self.global_step)
        best = self.ckpt_dir / "best.pt"
        if best.is_file():  # a crash after best.pt was written must not let a worse model replace it
            self.best_eval_return = max(self.best_eval_return, float(load_checkpoint(best)["best_eval_return"]))
