"""Shared test helpers: compose configs with Hydra, keep W&B offline and quiet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ppo_lab.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_configs()


def compose_cfg(overrides: list[str] | None = None, config_name: str = "train"):
    """Compose ``conf/<config_name>.yaml`` with ``overrides``, as ``python train.py`` would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


def run_script(script: str, args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run ``python <ROOT>/<script> <args>`` in ``cwd`` as a user would; returns CompletedProcess.

    ``env`` entries are added to the environment; a value of None removes that variable."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def sigterm_once_training(args: list[str], cwd: Path, metrics: Path, timeout: float = 60):
    """Start ``python train.py <args>``, send SIGTERM once ``metrics`` (a metrics.jsonl) has a
    row, and wait for it to exit. Returns ``(returncode, stderr)``."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture
def tiny_overrides() -> list[str]:
    """A run of two CartPole updates without W&B."""
    return ["debug=fast", "agent.num_envs=2", "agent.num_steps=64", "total_timesteps=256"]
