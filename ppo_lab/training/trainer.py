"""The PPO training loop: collect -> advantages -> update epochs -> log -> evaluate/checkpoint.

Read top to bottom like CleanRL's ppo.py. Every one of the implementation details it uses is a
named step here or in the module it calls (details table: ``docs/details.md``). The Trainer owns
the optimizer and the counters; everything else it is handed (env, network, sinks, callbacks)
and the checkpoint composes each component's own ``state_dict()``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from ppo_lab.algo.advantages import compute_gae
from ppo_lab.algo.losses import explained_variance, ppo_losses, total_loss, update_kl_beta
from ppo_lab.algo.optim import FlatAdam
from ppo_lab.algo.schedules import linear_anneal
from ppo_lab.config import LossType, TrainConfig
from ppo_lab.envs import EnvStateSnapshot, NormalizationStats
from ppo_lab.io.checkpoint import load_checkpoint, load_components, save_checkpoint, state_of
from ppo_lab.policies.protocol import is_recurrent
from ppo_lab.training.callbacks import Callback, RunView
from ppo_lab.training.diagnostics import Diagnostics
from ppo_lab.training.evaluation import evaluate_policy
from ppo_lab.training.rollout import RolloutBuffer, RolloutCollector
from ppo_lab.training.runtime import GlobalRNG

LOG = logging.getLogger("ppo_lab")

#: Per-minibatch statistics averaged over an update and logged as ``train/<key>``.
STAT_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac",
             "loss", "grad_norm")


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


class TrainingDiverged(RuntimeError):
    """A loss or parameter became NaN/inf. The message names the update and the quantity."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved. The message says how to resume."""


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
        self._stop_signal: Optional[int] = None
        self.stopped_by: Optional[str] = None
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

        Raises:
            TrainingDiverged: non-finite loss or parameters (the last checkpoint is left intact).
            TrainingInterrupted: SIGTERM/SIGINT; a checkpoint was written first.
        """
        a = self.cfg.agent
        start = time.perf_counter()
        start_step = self.global_step
        bar = tqdm(total=self.num_iterations * a.batch_size, initial=self.global_step, unit="step",
                   disable=not self.cfg.progress, dynamic_ncols=True, mininterval=1.0)
        # Signal handlers can only be installed from the main thread (not, e.g., a Ray actor's).
        in_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
        try:
            self._notify("on_training_start")
            for iteration in range(self.iteration + 1, self.num_iterations + 1):
                # 1. Schedules: linear annealing of lr and clip_coef (detail 4).
                lr, clip_coef = self._schedules(iteration)
                # 2. Rollout: num_steps vector steps with the current policy (detail 1).
                tic = time.perf_counter()
                buf, episodes = self.collector.collect(self.network)
                self.global_step += a.batch_size
                self.iteration = iteration
                self.timing["rollout"] += time.perf_counter() - tic
                # 3. Advantages: GAE with bootstrap on truncation (detail 5).
                tic = time.perf_counter()
                advantages, returns = compute_gae(
                    buf.rewards, buf.values, buf.next_values(),
                    buf.terminated, buf.truncated, a.gamma, a.gae_lambda,
                )
                # 4. Update: epochs of shuffled minibatches (details 6-11).
                stats = self._update(buf, advantages, returns, clip_coef)
                self.timing["update"] += time.perf_counter() - tic
                # 5. Log, and let the callbacks see the update.
                tic = time.perf_counter()
                sps = (self.global_step - start_step) / (tic - start)
                metrics = self._log(stats, episodes, lr, clip_coef, sps, elapsed=tic - start)
                bar.update(a.batch_size)
                bar.set_postfix(sps=f"{sps:,.0f}", ret=self._recent_return(), refresh=False)
                self.timing["log"] += time.perf_counter() - tic
                self._notify("on_update_end", metrics)
                # 6. Evaluate and checkpoint.
                if self.cfg.eval_interval and iteration % self.cfg.eval_interval == 0:
                    self.evaluate()
                if iteration % self.cfg.checkpoint_interval == 0:
                    self.save(f"update_{iteration:06d}.pt")
                if self._stop_signal is not None:
                    self._interrupt()
                if self.stopped_by is not None:
                    LOG.info("callbacks.%s asked to stop at update %d (global_step %d)",
                             self.stopped_by, self.iteration, self.global_step)
                    break
            final = self.evaluate(final=True)
            self.save("final.pt")
            final["time/wall_s"] = time.perf_counter() - start
            final.update(self.time_breakdown())
            if self.stopped_by is not None:
                final["stopped_by"] = self.stopped_by
            self.sinks.summary(final)
            self._notify("on_training_end", final)
            return final
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------------ phases
    def time_breakdown(self) -> dict[str, float]:
        """Cumulative seconds of this process's training loop by phase: ``time/env_s`` (inside
        ``envs.step``), ``time/inference_s`` (the rest of the rollout: policy forward, sampling,
        copies), ``time/update_s`` (GAE + gradient epochs), ``time/log_s``."""
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
        """``update_epochs`` passes of ``num_minibatches`` shuffled minibatches over the valid steps
        (the buffer hands them out; autoreset steps are left out). Early stop: after an epoch
        whose mean approx_kl exceeds ``target_kl``."""
        a = self.cfg.agent
        batch = buf.training_batch(advantages, returns, self.device)
        kl_beta = self.kl_beta if a.loss is LossType.kl_penalty else None

        # One row of STAT_KEYS per minibatch, stacked once (not one add per statistic).
        rows: list[torch.Tensor] = []
        epochs_run, kl_column = 0, STAT_KEYS.index("approx_kl")
        recurrent = is_recurrent(self.network)
        for epoch in range(a.update_epochs):
            epoch_start = len(rows)
            # Recurrent policies: minibatches of whole env sequences, replayed from their stored state.
            minibatches = batch.sequence_minibatches(a.num_minibatches) if recurrent else batch.minibatches(a.num_minibatches)
            for mb in minibatches:
                # Keyword arguments only where needed: a user's feed-forward network may take neither.
                kwargs: dict[str, Any] = {} if mb.masks is None else {"mask": mb.masks}
                if recurrent:
                    scores = self.network.evaluate_actions(mb.obs, mb.actions, state=mb.state,
                                                           episode_start=mb.episode_starts, **kwargs)
                    new_logprob, entropy, new_value = (x[mb.select] for x in scores)
                else:
                    new_logprob, entropy, new_value = self.network.evaluate_actions(mb.obs, mb.actions, **kwargs)
                terms = ppo_losses(
                    new_logprob, mb.logprobs, mb.advantages, new_value, mb.values, mb.returns,
                    entropy, clip_coef, a.clip_vloss, a.norm_adv, kl_beta,
                )
                loss = total_loss(terms, a.ent_coef, a.vf_coef)
                self.optimizer.zero_grad()
                loss.backward()
                # Detail 11: global gradient clipping.
                grad_norm = self.optimizer.clip_grad_norm_(a.max_grad_norm)
                self.optimizer.step()
                self.network.after_optimizer_step()
                terms["loss"], terms["grad_norm"] = loss, grad_norm
                rows.append(torch.stack([terms[k] for k in STAT_KEYS]).detach())
            epochs_run = epoch + 1
            epoch_rows = rows[epoch_start:]
            last_epoch_kl = float(torch.stack(epoch_rows)[:, kl_column].mean()) if epoch_rows else 0.0
            if a.target_kl is not None and last_epoch_kl > a.target_kl:
                break

        stats = dict(zip(STAT_KEYS, torch.stack(rows).mean(0).tolist()))
        self._check_finite(stats)
        stats["epochs"] = epochs_run
        stats["explained_variance"] = explained_variance(batch.values[batch.valid], batch.returns[batch.valid])
        if kl_beta is not None:
            self.kl_beta = update_kl_beta(self.kl_beta, last_epoch_kl, a.kl_target)
            stats["kl_beta"] = self.kl_beta
        stats.update(self.network.policy_stats())
        return stats

    def _check_finite(self, stats: dict[str, float]) -> None:
        for key in ("loss", "policy_loss", "value_loss", "entropy", "grad_norm"):
            if not math.isfinite(stats.get(key, 0.0)):
                raise TrainingDiverged(
                    f"update {self.iteration} (global_step {self.global_step}): train/{key} is "
                    f"{stats[key]}; stopping. The last good checkpoint in {self.ckpt_dir} is intact."
                )
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

    def _recent_return(self) -> str:
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
                                 "normalization": self.normalization, "rng": GlobalRNG(), "sinks": self.sinks}
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
        if state.get("env_state") is None:
            parts.pop("collector", None)
            parts.pop("env_state", None)
        load_components(parts, state)
        self.global_step, self.iteration = int(state["global_step"]), int(state["iteration"])
        self.kl_beta = float(state["kl_beta"])
        self.best_eval_return = float(state["best_eval_return"])
        self.recent_returns.extend(state.get("recent_returns", torch.zeros(0)).tolist())
        if "collector" not in parts:  # fresh episodes, but not a replay of the run's first resets
            self.collector.reset(seed=self.cfg.seed + self.global_step)
        best = self.ckpt_dir / "best.pt"
        if best.is_file():  # a crash after best.pt was written must not let a worse model replace it
            self.best_eval_return = max(self.best_eval_return, float(load_checkpoint(best)["best_eval_return"]))

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum

    def _interrupt(self) -> None:
        path = self.save(f"update_{self.iteration:06d}.pt")
        name = signal.Signals(self._stop_signal).name
        raise TrainingInterrupted(
            f"{name} received at update {self.iteration} (global_step {self.global_step}); "
            f"checkpoint saved to {path}. Resume with: python train.py resume={self.run_dir}"
        )
