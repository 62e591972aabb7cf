"""Wiring of one training run, in a visible order: validate -> env -> network -> loggers -> trainer.

``train.py`` is the Hydra entry point; it calls :func:`train` with the composed config and the
Hydra run dir. Tests call :func:`train` directly with a config composed by ``hydra.compose``.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ppo_lab.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
from ppo_lab.config import ConfigError, TrainConfig, apply_aliases, to_typed
from ppo_lab.envs import make_vec_env
from ppo_lab.loggers import JsonlLogger, Loggers, TensorBoardLogger, WandbLogger
from ppo_lab.networks import ActorCritic, check_action_type, check_network_fits


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu.

    Raises:
        ConfigError: ``cuda`` asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; allowed: device=cpu or device=auto")
    return torch.device(name)


def build_network(cfg: TrainConfig, envs: Any, device: torch.device) -> ActorCritic:
    """Hydra-instantiate ``cfg.network`` (its ``_target_``) for the spaces of ``envs``.

    Raises:
        ConfigError: the action type or network kind does not fit the env.
    """
    check_action_type(envs.single_action_space, cfg.action.type)
    check_network_fits(envs.single_observation_space, cfg.network.kind)
    return instantiate(
        OmegaConf.structured(cfg.network),
        observation_space=envs.single_observation_space,
        action_space=envs.single_action_space,
        action_type=cfg.action.type,
        log_std_init=cfg.action.log_std_init,
        _convert_="all",
    ).to(device)


def resolve_torch_threads(cfg: TrainConfig) -> int:
    """The torch intra-op thread count of a run: ``cfg.torch_threads`` when set, else 1 for MLP
    networks and the number of CPU cores this process may use for CNNs (issue #8)."""
    if cfg.torch_threads is not None:
        return cfg.torch_threads
    if cfg.network.kind != "cnn":
        return 1
    # Cores this process may run on (taskset / SLURM / cgroup cpusets); not on macOS or Windows.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_everything(seed: int, torch_threads: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; set torch's thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(torch_threads)
    torch.backends.cudnn.deterministic = deterministic


def resolved_config(cfg: DictConfig, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """The run's config as plain data with aliases applied (what W&B and checkpoints store)."""
    cfg = cfg.copy()
    apply_aliases(cfg)
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if overrides is not None:
        data["overrides"] = list(overrides)
    return data


def run_name(cfg: TrainConfig, overrides: Optional[list[str]] = None) -> str:
    """``cfg.run_name``, or ``<env id>__s<seed>__<override list>`` / ``<env id>__s<seed>__<time>``."""
    if cfg.run_name:
        return cfg.run_name
    if overrides:
        return f"{cfg.env.id}__" + ",".join(o for o in overrides if not o.startswith("hydra"))
    return f"{cfg.env.id}__s{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def sweep_group(sweep_dir: str | Path) -> str:
    """W&B group of a multirun: ``sweep_<date>_<time>`` from ``multirun_outputs/<date>/<time>``."""
    path = Path(sweep_dir)
    return f"sweep_{path.parent.name}_{path.name}"


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: Optional[list[str]] = None,
    sweep_dir: Optional[str] = None,
) -> dict[str, float]:
    """Train one run and return its final evaluation metrics.

    Args:
        cfg: the composed config (``conf/train.yaml`` plus overrides).
        run_dir: where config, checkpoints, metrics and W&B files go.
        overrides: the command-line overrides (for the run name and W&B config).
        sweep_dir: the multirun's sweep dir (the W&B group), if any.

    Raises:
        ConfigError: a bad value, before any env is built; or a mismatch found when the env or
            network is built, before training starts.
        CheckpointError: ``resume`` names a missing or unreadable checkpoint.
    """
    run_dir = Path(run_dir)
    # 0. Read the checkpoint to resume from (its run's own config); validate the config once.
    resume_state = None
    if cfg.get("resume"):
        ckpt = find_checkpoint(cfg.resume, latest=True)
        resume_state = load_checkpoint(ckpt)
        cfg = resume_config(resume_state, cfg.resume, overrides or [])
        run_dir = run_dir_of(ckpt)
        print(f"resuming {run_dir} from {ckpt.name} (update {resume_state['iteration']}, "
              f"global_step {resume_state['global_step']})", file=sys.stderr)
    typed = to_typed(cfg)
    if resume_state is None:
        ensure_run_dir_free(run_dir)
    # The thread count changes CPU float results: resolve it once and record the number in the
    # run's config, so a resume elsewhere (another core count) uses the same one.
    typed.torch_threads = cfg.torch_threads = resolve_torch_threads(typed)
    run_config = resolved_config(cfg, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume_state is None:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_config)))
    seed_everything(typed.seed, typed.torch_threads, typed.torch_deterministic)
    device = resolve_device(typed.device)

    # 1. Environment.
    envs = make_vec_env(typed.env, typed.agent.num_envs, typed.agent.gamma)
    try:
        # 2. Network (Hydra instantiates network.yaml's _target_).
        network = build_network(typed, envs, device)
        if resume_state is not None:
            check_compatible(resume_state, network, typed.resume)
        # 3. Loggers.
        sinks: list[Any] = [JsonlLogger(run_dir)]
        if typed.logger.tensorboard:
            sinks.append(TensorBoardLogger(run_dir))
        if typed.logger.kind == "wandb":
            name = run_name(typed, overrides)
            group = sweep_group(sweep_dir) if sweep_dir else name
            run_id = None
            if resume_state is not None:  # continue the same W&B run, under its own name and group
                run_id = resume_state.get("wandb_run_id")
                name = resume_state.get("wandb_name") or name
                group = resume_state.get("wandb_group") or group
            tags = [typed.env.id] + (["sweep"] if sweep_dir else [])
            sinks.append(WandbLogger(typed.logger, run_dir, run_config, name, group=group,
                                     run_id=run_id, tags=tags))
        loggers = Loggers(sinks)
    except BaseException:
        envs.close()
        raise
    # 4. Trainer (Hydra instantiates trainer._target_), then fit. Loggers always finish.
    exit_code = 1
    try:
        make_trainer = instantiate(OmegaConf.structured(typed.trainer), _partial_=True)
        trainer = make_trainer(cfg=typed, envs=envs, network=network, loggers=loggers,
                               run_dir=run_dir, device=device, run_config=run_config,
                               resume_state=resume_state)
        result = trainer.fit()
        exit_code = 0
        return result
    finally:
        try:
            loggers.finish(exit_code)
        except Exception:  # never let a logger's close hide the error that ended training
            if exit_code == 0:
                raise
            logging.getLogger("ppo_lab").exception("closing the loggers failed")
        finally:
            envs.close()


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


def saved_config(state: dict[str, Any]) -> DictConfig:
    """The config a checkpoint's run trained with (``state["config"]``, without the recorded
    command-line ``overrides`` list)."""
    saved = OmegaConf.create(state["config"])
    saved.pop("overrides", None)
    return saved


def resume_config(state: dict[str, Any], resume: str, overrides: list[str]) -> DictConfig:
    """The config to continue a run with: the run's saved config, plus the command line's
    ``key.path=value`` overrides (e.g. ``total_timesteps=200000`` to extend it).

    Raises:
        ConfigError: an override selects a config group (``env=...``): a resumed run keeps its own.
    """
    saved = saved_config(state)
    extra = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    groups = {"env", "agent", "network", "action", "logger", "debug", "experiment", "hparams_search"}
    bad = [o for o in extra if o.split("=")[0].lstrip("+~") in groups or o.startswith("~")]
    if bad:
        raise ConfigError(
            f"resume={resume}: overrides {bad} cannot change a resumed run (group choices and "
            "deletions); allowed: key=value overrides such as total_timesteps=200000"
        )
    extra = [o.lstrip("+") for o in extra]
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(extra)) if extra else saved
    merged.resume = str(resume)
    return merged


def check_compatible(state: dict[str, Any], network: torch.nn.Module, source: Any) -> None:
    saved = state["model"]
    current = network.state_dict()
    mismatched = sorted(
        k for k in set(saved) | set(current)
        if k not in saved or k not in current or saved[k].shape != current[k].shape
    )
    if mismatched:
        raise ConfigError(
            f"resume={source}: the checkpoint's network does not match this config's network "
            f"(parameters differ: {', '.join(mismatched[:5])}); resume with the run's own env and "
            "network settings"
        )


#: Exit statuses of train.py / evaluate.py.
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130


def main_guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; turn a :class:`ConfigError` or ``CheckpointError`` into one line on stderr and
    exit status 2 (no traceback), a divergence into its message and status 1, and an interrupt
    (SIGTERM/SIGINT, checkpoint saved) into its message and status 130."""
    from ppo_lab.checkpoint import CheckpointError
    from ppo_lab.trainer import TrainingDiverged, TrainingInterrupted

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
