"""Callbacks: user code that observes training and may ask it to stop.

Chosen by config, one ``_target_`` node per key (group ``callbacks``, multi-select:
``callbacks=[stop_on_reward,eval_video]``; a user's: ``+callbacks.mine._target_=mymod.MyCallback``).

The protocol (subclass :class:`Callback` and override the hooks you need):

* ``on_training_start(run)``: once, before the first update (after a resume, too). Raise
  :class:`~ppo_lab.config.ConfigError` here to refuse a setting before any training.
* ``on_update_end(run, metrics) -> bool | None``: after each update; ``metrics`` are the update's
  logged values (``train/...``, ``charts/...``, ``time/...``).
* ``on_eval_end(run, metrics) -> bool | None``: after each evaluation (``eval/episodic_return``...),
  the periodic ones (``eval_interval``) and the final one.
* ``on_training_end(run, result)``: once, with the final result (the run's summary).

A hook that returns ``True`` asks training to stop: the trainer finishes the update in hand, runs
the final evaluation, writes ``final.pt`` and reports ``stopped_by``. Callbacks observe only: the
:class:`RunView` they get holds copies and snapshots, never the live network, optimizer or envs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ppo_lab.config import ConfigError, TrainConfig
from ppo_lab.io.sinks import Video
from ppo_lab.policies.inference import InferencePolicy
from ppo_lab.training.evaluation import evaluate_policy


@dataclass
class RunView:
    """A read-only view of the training run for callbacks.

    Attributes:
        cfg: the run's validated config.
        run_dir: the run's dir.
        global_step: env steps so far, summed over envs.
        iteration: updates done so far.
        num_iterations: updates of the whole run.
    """

    cfg: TrainConfig
    run_dir: Path
    global_step: int
    iteration: int
    num_iterations: int
    _policy: Callable[[], InferencePolicy]
    _normalization: Callable[[], dict[str, Any]]
    _log: Callable[[dict[str, Any], int], None]

    def policy(self) -> InferencePolicy:
        """A numpy acting policy of the current weights (``InferencePolicy.act``); take a new one
        per use."""
        return self._policy()

    def normalization(self) -> dict[str, Any]:
        """A copy of the env's observation/reward normalization statistics (numpy), for
        evaluating as training does (``training.evaluation.evaluate_policy``)."""
        return self._normalization()

    def log(self, metrics: dict[str, Any]) -> None:
        """Send ``metrics`` to the run's sinks at the current ``global_step``."""
        self._log(metrics, self.global_step)


class Callback:
    """Base class of callbacks: every hook does nothing and asks for nothing."""

    def on_training_start(self, run: RunView) -> None:
        """Once, before the first update."""

    def on_update_end(self, run: RunView, metrics: dict[str, Any]) -> Optional[bool]:
        """After each update; return True to stop training."""
        return None

    def on_eval_end(self, run: RunView, metrics: dict[str, Any]) -> Optional[bool]:
        """After each evaluation; return True to stop training."""
        return None

    def on_training_end(self, run: RunView, result: dict[str, Any]) -> None:
        """Once, after the final evaluation and checkpoint."""


class StopOnRewardThreshold(Callback):
    """Stop once the mean evaluation return reaches ``reward_threshold`` (SB3's
    ``StopTrainingOnRewardThreshold``). Judged after each periodic evaluation, so set
    ``eval_interval`` (updates between evaluations).

    Args:
        reward_threshold: the mean ``eval/episodic_return`` to reach (>=).

    Raises:
        ConfigError: at start, ``reward_threshold`` is not finite or ``eval_interval`` is 0.
    """

    def __init__(self, reward_threshold: float) -> None:
        self.reward_threshold = float(reward_threshold)
        self.reached_at: Optional[int] = None

    def on_training_start(self, run: RunView) -> None:
        if not math.isfinite(self.reward_threshold):
            raise ConfigError(f"callbacks.stop_on_reward.reward_threshold={self.reward_threshold} is not allowed: a finite number")
        if run.cfg.eval_interval < 1:
            raise ConfigError(
                "callbacks.stop_on_reward judges periodic evaluations, but eval_interval=0 evaluates "
                "only at the end; allowed: eval_interval=N (updates between evaluations), e.g. eval_interval=5"
            )

    def on_eval_end(self, run: RunView, metrics: dict[str, Any]) -> Optional[bool]:
        if metrics["eval/episodic_return"] >= self.reward_threshold and self.reached_at is None:
            self.reached_at = run.global_step
            return True
        return None


class RecordEvalVideo(Callback):
    """Every ``every`` updates and at the end, record one evaluation episode (deterministic,
    frozen normalization, seeded ``eval_seed``) as an MP4 under ``<run dir>/videos/`` and log
    it as ``eval/video`` (CleanRL's ``capture_video``; W&B shows it, offline runs keep it).

    Args:
        every: updates between recordings (>= 1).
        max_steps: cap on the episode's env steps (a policy that never ends its episode).

    Raises:
        ConfigError: at start, ``every`` < 1, or moviepy (the ``video`` extra) is missing.
    """

    def __init__(self, every: int = 50, max_steps: int = 10_000) -> None:
        self.every, self.max_steps = int(every), int(max_steps)
        self.videos: list[str] = []

    def on_training_start(self, run: RunView) -> None:
        if self.every < 1:
            raise ConfigError(f"callbacks.eval_video.every={self.every} is not allowed: a positive number of updates")
        try:
            import moviepy  # noqa: F401 - gymnasium's RecordVideo writes MP4 through it
        except ImportError:
            raise ConfigError('callbacks=eval_video needs moviepy; install it with: pip install -e ".[video]"') from None

    def on_update_end(self, run: RunView, metrics: dict[str, Any]) -> Optional[bool]:
        if run.iteration % self.every == 0:
            self._record(run)
        return None

    def on_training_end(self, run: RunView, result: dict[str, Any]) -> None:
        if run.iteration % self.every != 0:
            self._record(run)

    def _record(self, run: RunView) -> None:
        video_dir = Path(run.run_dir) / "videos" / f"update_{run.iteration:06d}"
        (ret, length), = evaluate_policy(run.policy(), run.cfg.env, 1, run.cfg.eval_seed, True,
                                         run.normalization(), max_steps=self.max_steps,
                                         video_dir=str(video_dir))
        files = sorted(video_dir.glob("*.mp4"))
        if not files:
            raise RuntimeError(f"callbacks.eval_video: no MP4 was written to {video_dir}")
        self.videos.append(str(files[0]))
        run.log({"eval/video": Video(str(files[0])), "eval/video_return": ret})
