"""``python train.py``: the wiring of one training run, in a visible order:
validate -> env -> network -> sinks -> callbacks -> trainer.

``train.py`` is the Hydra entry point; it calls :func:`train` with the composed config and the
Hydra run dir. Tests call :func:`train` directly with a config composed by ``hydra.compose``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from ppo_lab.config import ConfigError, TrainConfig, migrate, to_typed
from ppo_lab.config.targets import instantiate_node
from ppo_lab.envs import check_masks_available, env_family, make_vec_env
from ppo_lab.io.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, run_dir_of
from ppo_lab.io.sinks import SinkContext, build_sinks
from ppo_lab.policies import build_network
from ppo_lab.training.callbacks import Callback
from ppo_lab.training.runtime import resolve_device, resolve_torch_threads, seed_everything
from ppo_lab.training.trainer import Trainer
from ppo_lab.commands.cli import ensure_run_dir_free, resolved_config

#: The config groups of ``conf/`` (a resumed run keeps its own choice of each).
GROUPS = ("env", "agent", "network", "action", "logger", "callbacks", "debug", "experiment", "hparams_search")


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


def build_callbacks(nodes: dict[str, dict[str, Any]]) -> dict[str, Callback]:
    """One callback per ``callbacks`` node (Hydra-instantiated), in order.

    Raises:
        ConfigError: a node cannot be built, or lacks a hook (naming ``callbacks.<key>``).
    """
    built = {}
    for key, node in nodes.items():
        callback = instantiate_node(f"callbacks.{key}", node)
        missing = [h for h in ("on_training_start", "on_update_end", "on_eval_end", "on_training_end")
                   if not callable(getattr(callback, h, None))]
        if missing:
            raise ConfigError(
                f"callbacks.{key}: {node['_target_']} lacks {', '.join(missing)}; allowed: a subclass "
                "of ppo_lab.training.callbacks.Callback"
            )
        built[key] = callback
    return built


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
    trainer = prepare_run(cfg, run_dir, overrides, sweep_dir)
    exit_code = 1
    try:
        result = trainer.fit()
        exit_code = 0
        return result
    finally:
        close_run(trainer, exit_code)


def prepare_run(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: Optional[list[str]] = None,
    sweep_dir: Optional[str] = None,
) -> Trainer:
    """Everything :func:`train` does before ``fit``: validate, seed, env, network, callbacks, run
    dir and config, sinks, trainer. A population sweep prepares each member this way (in its
    job's Hydra context), then trains them together. Close it with :func:`close_run`.

    Raises:
        ConfigError, CheckpointError: as :func:`train` (anything built so far is closed).
    """
    run_dir = Path(run_dir)
    # 0. Read the checkpoint to resume from (its run's own config); validate the config once.
    resume_state = None
    if cfg.get("resume"):
        ckpt = find_checkpoint(cfg.resume, latest=True)
        resume_state = load_checkpoint(ckpt)
        run_dir = run_dir_of(ckpt)
        cfg = resume_config(resume_state, cfg.resume, overrides or [], run_dir)
        print(f"resuming {run_dir} from {ckpt.name} (update {resume_state['iteration']}, "
              f"global_step {resume_state['global_step']})", file=sys.stderr)
    typed = to_typed(cfg)
    if resume_state is None:
        ensure_run_dir_free(run_dir)
    # The thread count changes CPU float results: resolve it once and record the number in the
    # run's config, so a resume elsewhere (another core count) uses the same one.
    typed.torch_threads = cfg.torch_threads = resolve_torch_threads(typed)
    run_config = resolved_config(cfg, overrides)
    seed_everything(typed.seed, typed.torch_threads, typed.torch_deterministic)
    device = resolve_device(typed.device)

    # 1. Environment (its family decides whether its state can be checkpointed exactly).
    family = env_family(typed.env)
    check_masks_available(typed.env, typed.agent.action_masking, typed.seed)  # action_masking=on: fail before any write
    envs = make_vec_env(typed.env, typed.agent.num_envs, typed.agent.gamma)
    sinks = None
    try:
        # 2. Network (Hydra instantiates network._target_), checked against the protocol.
        network = build_network(typed, envs, device)
        if resume_state is not None:
            check_compatible(resume_state, network, typed.resume)
        # 3. Callbacks, before anything is written: a bad one fails first.
        callbacks = build_callbacks(typed.callbacks)
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_state is None:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_config)))
        # 4. Sinks: metrics.jsonl always, then each logger node (W&B continues its run on resume).
        name = run_name(typed, overrides)
        context = SinkContext(run_dir=run_dir, run_config=run_config, name=name,
                              group=sweep_group(sweep_dir) if sweep_dir else name,
                              tags=[typed.env.id] + (["sweep"] if sweep_dir else []))
        sinks = build_sinks(typed.logger, context, resume=(resume_state or {}).get("sinks") or legacy_sink_state(resume_state))
        # 5. Trainer (fit is the caller's).
        return Trainer(typed, envs, network, sinks, run_dir, device, run_config, callbacks=callbacks,
                       exact_env_state=family.exact_state, resume_state=resume_state)
    except BaseException:
        try:
            if sinks is not None:
                sinks.finish(1)
        except Exception:  # never let a sink's close hide the error that stopped the setup
            logging.getLogger("ppo_lab").exception("closing the sinks failed")
        finally:
            envs.close()
        raise


def close_run(trainer: Trainer, exit_code: int) -> None:
    """Finish the run's sinks (``exit_code`` 0: trained to the end) and close its envs; a sink's
    failure to close never hides the error that ended training."""
    try:
        trainer.sinks.finish(exit_code)
    except Exception:
        if exit_code == 0:
            raise
        logging.getLogger("ppo_lab").exception("closing the sinks failed")
    finally:
        trainer.envs.close()


def legacy_sink_state(state: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The W&B run of a checkpoint written before sinks kept their own state."""
    if not state or not state.get("wandb_run_id"):
        return None
    return {"wandb": {"run_id": state["wandb_run_id"], "name": state.get("wandb_name"),
                      "group": state.get("wandb_group")}}


def saved_config(state: dict[str, Any]) -> DictConfig:
    """The config a checkpoint's run trained with (``state["config"]``, without the recorded
    command-line ``overrides`` list)."""
    saved = OmegaConf.create(state["config"])
    saved.pop("overrides", None)
    return saved


def run_choices(run_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The config-group choices a run was trained with: Hydra's record
    (``<run dir>/.hydra/hydra.yaml``, ``runtime.choices``), else its saved ``group=option``
    overrides."""
    hydra_yaml = Path(run_dir) / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        choices = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
        if choices:
            return {k: v for k, v in choices.items() if not str(k).startswith("hydra") and v is not None}
    saved = state.get("config", {}).get("overrides", []) or []
    return dict(o.split("=", 1) for o in saved if "=" in o and o.split("=")[0] in GROUPS)


def resume_config(state: dict[str, Any], resume: str, overrides: list[str], run_dir: Optional[Path] = None) -> DictConfig:
    """The config to continue a run with: the run's saved config, plus the command line's
    ``key.path=value`` overrides (e.g. ``total_timesteps=200000`` to extend it). A group choice
    that repeats the run's own (``logger=none`` for a run trained with it) is accepted.

    Raises:
        ConfigError: an override changes a config group (``env=...``) or deletes a key: a
            resumed run keeps its own.
    """
    saved = migrate(saved_config(state))
    extra = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    choices = run_choices(run_dir, state) if run_dir is not None else {}

    def changes_group(o: str) -> bool:
        key, _, value = o.partition("=")
        group = key.lstrip("+~")
        if o.startswith("~"):
            return True
        return group in GROUPS and str(choices.get(group)) != value

    bad = [o for o in extra if changes_group(o)]
    if bad:
        raise ConfigError(
            f"resume={resume}: overrides {bad} cannot change a resumed run (group choices and "
            "deletions); allowed: key=value overrides such as total_timesteps=200000"
            + (f", or the run's own choices ({', '.join(f'{k}={v}' for k, v in choices.items() if k in GROUPS)})" if choices else "")
        )
    extra = [o.lstrip("+") for o in extra if o.split("=")[0].lstrip("+") not in GROUPS]
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


