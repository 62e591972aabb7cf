"""Metric sinks: the JSON-lines file (always), Weights & Biases, TensorBoard, and a user's own.

Sinks observe; they never change training state. One name per quantity everywhere:
``charts/episodic_return``, ``train/policy_loss``, ``time/sps``... all against ``global_step``
(env steps summed over envs).

The protocol of a sink (a user's: ``+logger.mine._target_=mymod.MySink``):

* constructor ``Class(context: SinkContext, **kwargs)``: the node's other keys are ``kwargs``;
* ``log(metrics: dict[str, float | Video], step: int) -> None``: ``step`` is ``global_step``;
  a :class:`Video` value is a recorded MP4 (a sink that cannot show videos skips it);
* ``summary(values: dict) -> None``: the final evaluation, once at the end;
* ``finish(exit_code: int) -> None``: always called, 0 on success;
* optional ``state_dict() -> dict``: stored in checkpoints and handed back on resume as
  ``context.resume`` (W&B: the run id, to continue the same run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ppo_lab.config import ConfigError
from ppo_lab.config.targets import instantiate_node


@dataclass(frozen=True)
class Video:
    """A recorded video file, logged as a metric value (W&B shows it; JSON lines store the path).

    Attributes:
        path: an MP4 file.
    """

    path: str


@dataclass
class SinkContext:
    """What every sink is told about its run.

    Attributes:
        run_dir: the run's dir (Hydra's); sinks write under it.
        run_config: the resolved config as plain data.
        name: run name (``<env id>__<overrides>``).
        group: the W&B-style group (the sweep, for multiruns; else the run name).
        tags: tags for the run (env id, ``sweep``).
        job_type: ``train`` or ``eval``.
        resume: this sink's ``state_dict()`` from the checkpoint being resumed, if any.
    """

    run_dir: Path
    run_config: dict[str, Any] = field(default_factory=dict)
    name: str = "run"
    group: Optional[str] = None
    tags: Sequence[str] = ()
    job_type: str = "train"
    resume: Optional[dict[str, Any]] = None


class JsonlSink:
    """Appends one JSON object per ``log`` call to ``<run_dir>/metrics.jsonl``; non-finite floats
    become null, a :class:`Video` its path. Writes ``summary.json`` at the end."""

    def __init__(self, context: SinkContext) -> None:
        self.path = Path(context.run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    @staticmethod
    def _plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Video):
            return value.path
        return value

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"global_step": step}
        row.update({k: self._plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def summary(self, values: dict[str, Any]) -> None:
        (self.path.parent / "summary.json").write_text(json.dumps(values, indent=2, default=str))

    def finish(self, exit_code: int = 0) -> None:
        self._file.close()


class TensorBoardSink:
    """Writes every scalar metric to ``<run_dir>/tensorboard`` (x = ``global_step``; ``logger=tensorboard``).

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, context: SinkContext) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                f"logger=tensorboard needs the tensorboard package ({exc}); install it with: "
                'pip install -e ".[sweep]"'
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(context.run_dir) / "tensorboard"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
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


class WandbSink:
    """A W&B run through the real ``wandb`` library, its files in ``<run_dir>/wandb/`` (``logger=wandb``).

    Args:
        context: the run; ``context.resume`` (``{"run_id", "name", "group"}``) continues that run
            under its own name and group (``resume="allow"``).
        project: W&B project.
        entity: W&B entity (null: the account's default).
        mode: ``online``, ``offline`` or ``disabled``; null: see :func:`wandb_mode`.
        group: W&B group; null: ``context.group``.
        tags: extra tags, added to ``context.tags``.
        log_model: at the end (``summary``), log ``checkpoints/final.pt`` and ``best.pt`` as one
            W&B model artifact ``model-<run id>`` (Lightning's ``WandbLogger(log_model=True)``),
            its metadata the final evaluation; offline runs keep it and ``wandb sync`` uploads it.
    """

    #: Keys of the final evaluation copied into the model artifact's metadata.
    ARTIFACT_METADATA = ("eval/episodic_return", "eval/episodic_return_std",
                         "eval/best_episodic_return", "global_step")

    def __init__(
        self,
        context: SinkContext,
        project: str = "ppo_lab",
        entity: Optional[str] = None,
        mode: Optional[str] = None,
        group: Optional[str] = None,
        tags: Sequence[str] = (),
        log_model: bool = False,
    ) -> None:
        import wandb

        self._wandb = wandb
        self.context, self.log_model = context, bool(log_model)
        resume = context.resume or {}
        run_id = resume.get("run_id")
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=resume.get("group") or group or context.group,
            name=resume.get("name") or context.name,
            job_type=context.job_type,
            tags=[*tags, *context.tags],
            config=context.run_config,
            dir=str(context.run_dir),
            mode=wandb_mode(mode),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", x_disable_stats=True),
            # A population trains many runs in one process, each with its own live W&B run.
            reinit="create_new",
        )
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        values = {k: self._wandb.Video(v.path, format="mp4") if isinstance(v, Video) else v
                  for k, v in metrics.items()}
        self.run.log({"global_step": step, **values})

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value
        if self.log_model:
            self.log_model_artifact(values)

    def log_model_artifact(self, values: dict[str, Any]) -> Any:
        """Log ``<run_dir>/checkpoints/final.pt`` and ``best.pt`` (those present) as the model
        artifact ``model-<run id>`` (type ``model``, aliases ``latest`` and ``step-<global_step>``;
        a resumed run adds a version), its metadata the final evaluation and the env id.

        Returns:
            The logged ``wandb.Artifact``, or None when the run has no final or best checkpoint.
        """
        ckpt_dir = Path(self.context.run_dir) / "checkpoints"
        files = [ckpt_dir / name for name in ("final.pt", "best.pt") if (ckpt_dir / name).is_file()]
        if not files:
            return None
        env = (self.context.run_config or {}).get("env") or {}
        metadata: dict[str, Any] = {k: values[k] for k in self.ARTIFACT_METADATA if k in values}
        if "global_step" in metadata:
            metadata["global_step"] = int(metadata["global_step"])
        metadata.update(env_id=env.get("id"), algorithm="ppo", files=[f.name for f in files])
        artifact = self._wandb.Artifact(name=f"model-{self.run.id}", type="model", metadata=metadata)
        for path in files:
            artifact.add_file(str(path), name=path.name)
        step = int(values.get("global_step", 0))
        self.run.log_artifact(artifact, aliases=["latest", f"step-{step}"])
        return artifact

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)

    def state_dict(self) -> dict[str, Any]:
        """The run's id, name and group: a resumed run continues it, and evaluation runs join its group."""
        return {"run_id": self.run.id, "name": self.run.name, "group": self.run.group}


class Sinks:
    """Fan-out to the run's sinks; ``finish`` closes every sink even if one of them raises.

    Args:
        sinks: ``{key: sink}``, e.g. ``{"jsonl": ..., "wandb": ...}``.
    """

    def __init__(self, sinks: dict[str, Any]) -> None:
        self.sinks = dict(sinks)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for sink in self.sinks.values():
            sink.log(metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        for sink in self.sinks.values():
            sink.summary(values)

    def state_dict(self) -> dict[str, Any]:
        """``{key: sink.state_dict()}`` for the sinks that have state."""
        return {k: s.state_dict() for k, s in self.sinks.items() if hasattr(s, "state_dict")}

    def finish(self, exit_code: int = 0) -> None:
        errors = []
        for sink in self.sinks.values():
            try:
                sink.finish(exit_code)
            except Exception as exc:  # keep closing the others; re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]


def build_sinks(nodes: dict[str, dict[str, Any]], context: SinkContext,
                resume: Optional[dict[str, Any]] = None) -> Sinks:
    """The JSON-lines sink plus one sink per ``logger`` node (Hydra-instantiated), in order.
    A sink that fails to start closes those already started.

    Args:
        nodes: ``cfg.logger``: ``{key: {_target_: ..., **kwargs}}``.
        context: the run (``resume`` is filled per sink from ``resume``).
        resume: the checkpoint's ``sinks`` state (``Sinks.state_dict()``), when resuming.

    Raises:
        ConfigError: a node cannot be built (naming ``logger.<key>``).
    """
    built: dict[str, Any] = {"jsonl": JsonlSink(context)}
    try:
        for key, node in nodes.items():
            ctx = dataclasses.replace(context, resume=(resume or {}).get(key))
            built[key] = instantiate_node(f"logger.{key}", node, context=ctx)
    except BaseException:
        Sinks(built).finish(1)
        raise
    return Sinks(built)
