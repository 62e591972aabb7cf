"""``python evaluate.py``: evaluate a saved run exactly as it was trained (its own config,
network and frozen normalization) and write ``<run dir>/eval/results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppo_lab.commands.train import check_compatible, legacy_sink_state, saved_config
from ppo_lab.config import EvaluateConfig, TrainConfig, to_typed, validate_evaluate
from ppo_lab.envs import make_vec_env, normalization_from_tensors
from ppo_lab.io.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
from ppo_lab.io.sinks import SinkContext, WandbSink
from ppo_lab.policies import build_network
from ppo_lab.training.evaluation import evaluate_policy
from ppo_lab.training.runtime import resolve_device


def restore_network(state: dict[str, Any], source: Any, device: torch.device) -> tuple[TrainConfig, torch.nn.Module]:
    """The run's typed config and its network with the checkpoint's weights, built for the run's
    own env spaces (what ``evaluate.py`` and ``ppo_lab.load`` both need).

    Args:
        state: a loaded checkpoint (or a Hub package read into the same shape).
        source: where it came from, named in errors.
        device: where the network lives.

    Raises:
        ConfigError: the saved config is bad, or its network does not match the saved weights.
    """
    cfg = to_typed(saved_config(state))  # to_typed migrates older saved configs
    probe = make_vec_env(cfg.env, 1)
    try:
        network = build_network(cfg, probe, device)
    finally:
        probe.close()
    check_compatible(state, network, source)
    network.load_state_dict(state["model"])
    return cfg, network


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a saved run exactly as it was trained: its own config, network, normalization.

    Writes ``<run dir>/eval/results.json`` (per-episode return, length and seed; mean; std;
    seeds; checkpoint step) and, with ``video``, MP4s under ``<run dir>/eval/videos``.

    Raises:
        CheckpointError: the checkpoint does not exist, or cannot be read.
        ConfigError: the saved config or network does not fit (e.g. a checkpoint of another
            network than the saved config describes).
    """
    validate_evaluate(cfg)
    ckpt_path = find_checkpoint(cfg.checkpoint)
    state = load_checkpoint(ckpt_path)
    train_cfg, network = restore_network(state, ckpt_path, resolve_device(cfg.device))
    run_dir = run_dir_of(ckpt_path)
    out_dir = run_dir / "eval"
    norm = normalization_from_tensors(state["normalization"])
    policy = network.inference_policy()

    episodes = []
    for seed in cfg.eval_seeds:
        video_dir = str(out_dir / "videos" / f"seed_{seed}") if cfg.video else None
        results = evaluate_policy(policy, train_cfg.env, cfg.eval_episodes, seed, cfg.deterministic,
                                  norm, video_dir=video_dir, action_masking=train_cfg.agent.action_masking)
        episodes += [{"seed": seed + k, "return": r, "length": n} for k, (r, n) in enumerate(results)]
    returns = np.array([e["return"] for e in episodes])
    summary = {
        "checkpoint": str(ckpt_path),
        "global_step": int(state["global_step"]),
        "env_id": train_cfg.env.id,
        "deterministic": cfg.deterministic,
        "eval_seeds": list(cfg.eval_seeds),
        "episodes": episodes,
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_length": float(np.mean([e["length"] for e in episodes])),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    videos = sorted(str(p) for p in (out_dir / "videos").rglob("*.mp4")) if cfg.video else []
    summary["videos"] = videos
    if cfg.logger.kind == "wandb":
        _log_eval_to_wandb(cfg, state, train_cfg, run_dir, summary)
    return summary


def _log_eval_to_wandb(cfg: EvaluateConfig, state: dict[str, Any], train_cfg: TrainConfig,
                       run_dir: Path, summary: dict[str, Any]) -> None:
    import wandb

    trained_with = (train_cfg.logger or {}).get("wandb", {})
    train_run = (state.get("sinks") or {}).get("wandb") or (legacy_sink_state(state) or {}).get("wandb") or {}
    context = SinkContext(
        run_dir=run_dir,
        run_config={"checkpoint": summary["checkpoint"], "train_run_id": train_run.get("run_id"),
                    "deterministic": cfg.deterministic, "eval_seeds": list(cfg.eval_seeds)},
        name=f"eval_{train_cfg.env.id}_step{summary['global_step']}",
        group=train_run.get("group"), job_type="eval",
    )
    logger = WandbSink(context, project=cfg.logger.project or trained_with.get("project") or "ppo_lab",
                       entity=cfg.logger.entity or trained_with.get("entity"), mode=cfg.logger.mode)
    try:
        table = wandb.Table(columns=["seed", "return", "length"],
                            data=[[e["seed"], e["return"], e["length"]] for e in summary["episodes"]])
        payload: dict[str, Any] = {"eval/episodic_return": summary["mean_return"],
                                   "eval/episodic_return_std": summary["std_return"],
                                   "eval/episodes": table}
        for i, path in enumerate(summary["videos"]):
            payload[f"eval/video_{i}"] = wandb.Video(path, format="mp4")
        logger.log(payload, summary["global_step"])
        logger.finish(exit_code=0)
    except BaseException:
        logger.finish(exit_code=1)
        raise


def format_results(summary: dict[str, Any]) -> str:
    """The per-episode table and the mean line that ``evaluate.py`` prints."""
    lines = [f"{'seed':>8} {'return':>10} {'length':>8}"]
    lines += [f"{e['seed']:>8} {e['return']:>10.2f} {e['length']:>8}" for e in summary["episodes"]]
    lines.append(
        f"mean return {summary['mean_return']:.2f} +- {summary['std_return']:.2f} over "
        f"{len(summary['episodes'])} episodes ({'deterministic' if summary['deterministic'] else 'stochastic'}), "
        f"checkpoint {summary['checkpoint']} at global_step {summary['global_step']}"
    )
    return "\n".join(lines)
