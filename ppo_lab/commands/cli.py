"""What train.py and evaluate.py need before (or without) training: exit statuses and the
error guard, the resolved config, the result line, run-dir checks. No torch import, so the
launcher process of a population sweep (which trains nothing itself) starts fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ppo_lab.config import ConfigError, apply_aliases
from ppo_lab.io.paths import CheckpointError, find_checkpoint, run_dir_of
from ppo_lab.training.errors import TrainingDiverged, TrainingInterrupted


def resolved_config(cfg: DictConfig, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """The run's config as plain data with aliases applied (what W&B and checkpoints store)."""
    cfg = cfg.copy()
    apply_aliases(cfg)
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if overrides is not None:
        data["overrides"] = list(overrides)
    return data


def result_line(result: dict[str, Any], run_dir: str | Path) -> str:
    """The line a finished job prints: final eval return, steps, wall time, run dir."""
    stopped = f", stopped by callbacks.{result['stopped_by']}" if result.get("stopped_by") else ""
    return (
        f"eval/episodic_return={result['eval/episodic_return']:.1f} "
        f"(std {result['eval/episodic_return_std']:.1f}) at global_step={int(result['global_step'])}, "
        f"wall {result['time/wall_s']:.1f} s{stopped}; run dir: {run_dir}"
    )


def check_run_dir_args(args: list[str]) -> None:
    """Before Hydra writes ``<run dir>/.hydra``: refuse an explicit ``hydra.run.dir`` that already
    holds another run's checkpoints (unless resuming), so nothing of that run is overwritten.

    Raises:
        ConfigError: naming the dir and what is allowed.
    """
    given = dict(a.split("=", 1) for a in args if a.startswith(("hydra.run.dir=", "resume=")))
    if given.get("hydra.run.dir") and "resume" not in given:
        ensure_run_dir_free(Path(given["hydra.run.dir"]))


def ensure_run_dir_free(run_dir: Path) -> None:
    """Raise :class:`ConfigError` when ``run_dir`` already holds another run's checkpoints."""
    if any((run_dir / "checkpoints").glob("*.pt")):
        raise ConfigError(
            f"run dir {run_dir} already holds checkpoints of another run; allowed: "
            f"resume={run_dir} to continue it, or another hydra.run.dir (nothing was overwritten)"
        )


def resume_run_dir_args(args: list[str]) -> list[str]:
    """``hydra.run.dir=<the run's dir>`` and ``hydra.output_subdir=null`` for ``resume=<dir>``,
    so Hydra neither makes a stray ``outputs/<date>/<time>`` dir nor rewrites the run's own
    ``.hydra/`` record; nothing when the run dir is given or the path is bad (train reports it).
    """
    given = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    if not given.get("resume") or "hydra.run.dir" in given or "-m" in args or "--multirun" in args:
        return []
    try:
        run_dir = run_dir_of(find_checkpoint(given["resume"], latest=True))
    except CheckpointError:
        return []
    return [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


#: Exit statuses of train.py / evaluate.py.
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130


def main_guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; turn a :class:`ConfigError` or ``CheckpointError`` into one line on stderr and
    exit status 2 (no traceback), a divergence into its message and status 1, and an interrupt
    (SIGTERM/SIGINT, checkpoint saved) into its message and status 130."""
    try:
        return fn(*args, **kwargs)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except TrainingDiverged as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
