"""Metric sinks: a local JSON-lines file (always), Weights & Biases (``logger=wandb``).

Loggers observe; they never change training state. One name per quantity everywhere:
``charts/episodic_return``, ``train/policy_loss``, ``time/sps``... all against ``global_step``
(env steps summed over envs).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ppo_lab.config import ConfigError, LoggerConfig


class JsonlLogger:
    """Appends one JSON object per ``log`` call to ``<run_dir>/metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"global_step": step}
        row.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def summary(self, values: dict[str, Any]) -> None:
        (self.path.parent / "summary.json").write_text(json.dumps(values, indent=2, default=str))

    def finish(self, exit_code: int = 0) -> None:
        self._file.close()


class TensorBoardLogger:
    """Writes every metric as a TensorBoard scalar (x = ``global_step``) to ``<run_dir>/tensorboard``.

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                f"logger.tensorboard=true needs the tensorboard package ({exc}); install it with: "
                'pip install -e ".[sweep]"'
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.writer.flush()

    def finish(self, exit_code: int = 0) -> None:
        self.writer.close()


def wandb_mode(configured: Optional[str]) -> str:
    """The W&B mode to run in: ``configured`` if set; else ``$WANDB_MODE``; else ``online`` when an
    API key is configured ($WANDB_API_KEY or a netrc entry for api.wandb.ai); else ``offline``."""
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


class WandbLogger:
    """A W&B run through the real ``wandb`` library, its files in ``<run_dir>/wandb/``.

    Args:
        cfg: logger config (project, entity, mode, group, tags).
        run_dir: the Hydra run dir.
        run_config: the resolved config, stored as the run's config.
        name: run name.
        group: W&B group (the sweep, for multiruns).
        run_id: an existing run's id to continue (resume).
        job_type: ``train`` or ``eval``.
        tags: extra tags (env id, ``sweep``), added to ``cfg.tags``.
    """

    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: Path,
        run_config: dict[str, Any],
        name: str,
        group: Optional[str] = None,
        run_id: Optional[str] = None,
        job_type: str = "train",
        tags: Sequence[str] = (),
    ) -> None:
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or group,
            name=name,
            job_type=job_type,
            tags=[*cfg.tags, *tags],
            config=run_config,
            dir=str(run_dir),
            mode=wandb_mode(cfg.mode),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({"global_step": step, **metrics})

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


class Loggers:
    """Fan-out to several sinks; ``finish`` closes every sink even if one of them raises."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    @property
    def wandb_run_id(self) -> Optional[str]:
        """The W&B run's id (None without W&B)."""
        run = self._wandb_run()
        return run.id if run is not None else None

    @property
    def wandb_name(self) -> Optional[str]:
        """The W&B run's display name (None without W&B)."""
        run = self._wandb_run()
        return run.name if run is not None else None

    @property
    def wandb_group(self) -> Optional[str]:
        """The W&B run's group, which evaluation runs join (None without W&B)."""
        run = self._wandb_run()
        return run.group if run is not None else None

    def _wandb_run(self) -> Any:
        for sink in self.sinks:
            if isinstance(sink, WandbLogger):
                return sink.run
        return None

    def log(self, metrics: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.summary(values)

    def finish(self, exit_code: int = 0) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.finish(exit_code)
            except Exception as exc:  # keep closing the others; re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]
