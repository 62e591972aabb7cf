"""``ppo_lab.train(overrides=[...])``: a training run from Python (notebooks, scripts), composed by
Hydra's compose API from the same ``conf/`` as ``python train.py``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ppo_lab.commands.train import train as train_run
from ppo_lab.config import ConfigError, TrainConfig, check_override_keys, register_configs, rewrite_alias_args

#: The project's config dir (beside the package in a source checkout / editable install).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def train(overrides: Optional[list[str]] = None, run_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Train one run as ``python train.py <overrides>`` would, and return the same result dict
    (``eval/episodic_return``, ``global_step``, ``time/wall_s``...) plus ``run_dir``.

    Args:
        overrides: command-line style overrides, e.g. ``["env=pendulum", "agent.clip=0.1"]``
            (aliases rewritten, unknown keys refused, as on the command line).
        run_dir: where the run goes; default ``outputs/<date>/<time>`` under the working dir,
            as ``python train.py``. ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` are
            written there too, so the sweep report and ``evaluate.py`` read it like any run.

    Raises:
        ConfigError: a bad override (before anything is written), or ``conf/`` is missing.
    """
    if not CONF_DIR.is_dir():
        raise ConfigError(f"ppo_lab.train needs the project's conf/ dir at {CONF_DIR}; install "
                          'ppo_lab from its source checkout (pip install -e ".[dev]")')
    overrides = rewrite_alias_args(list(overrides or []))
    check_override_keys(overrides, TrainConfig)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run_dir = Path(run_dir) if run_dir is not None else Path("outputs") / time.strftime("%Y-%m-%d") / (
        time.strftime("%H-%M-%S-") + f"{time.time_ns() // 1000 % 1_000_000:06d}")
    result = train_run(cfg, run_dir, overrides)
    hydra_dir = Path(run_dir) / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    return {**result, "run_dir": str(run_dir)}
