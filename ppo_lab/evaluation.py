"""Policy evaluation: run whole episodes with frozen normalization statistics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ppo_lab.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
from ppo_lab.config import EnvConfig, EvaluateConfig, to_typed, validate_evaluate
from ppo_lab.distributions import action_rng
from ppo_lab.envs import completed_episodes, load_normalization_state, make_vec_env, normalization_from_tensors
from ppo_lab.networks import ActorCritic


def evaluate_policy(
    network: ActorCritic,
    env_cfg: EnvConfig,
    episodes: int,
    seed: int,
    deterministic: bool = True,
    normalization: Optional[dict[str, Any]] = None,
    max_steps: int = 1_000_000,
    video_dir: Optional[str] = None,
) -> list[tuple[float, int]]:
    """Run ``episodes`` episodes, one per parallel env, env k reset with seed ``seed + k``.

    Args:
        network: the policy.
        env_cfg: env config (the same wrappers as in training).
        episodes: number of episodes.
        seed: base seed.
        deterministic: mode / mean action (True) or sampled actions (False).
        normalization: saved normalization statistics (``envs.normalization_state``), loaded
            frozen into the eval env.
        max_steps: safety cap on vector steps.
        video_dir: record the first episode there (gymnasium ``RecordVideo``).

    Returns:
        ``[(episodic_return, episodic_length)] * episodes``: the raw (unnormalized, unclipped,
        whole-game for Atari) return and the length in env steps.

    Raises:
        RuntimeError: some episode did not end within ``max_steps``.
    """
    # SyncVectorEnv: sub-env k is reset with seed + k (a batched env such as CartPoleVectorEnv
    # shares one RNG across its sub-envs, so its episodes would not match their stated seeds).
    envs = make_vec_env(dataclasses.replace(env_cfg, vectorization="sync"), episodes,
                        render_mode="rgb_array" if video_dir else None, video_dir=video_dir)
    try:
        if normalization:
            load_normalization_state(envs, normalization, freeze=True)
        obs, _ = envs.reset(seed=seed)
        results: list[Optional[tuple[float, int]]] = [None] * episodes
        was_training = network.training
        network.eval()
        policy = network.inference_policy()
        rng = action_rng(seed)  # stochastic evaluation: draws fixed by the eval seed
        for _ in range(max_steps):
            action, _, _ = policy.act(obs, rng, deterministic)
            obs, _, _, _, infos = envs.step(action)
            for i, ret, length in completed_episodes(infos):
                if results[i] is None:
                    results[i] = (ret, length)
            if all(r is not None for r in results):
                break
        network.train(was_training)
    finally:
        envs.close()
    if any(r is None for r in results):
        raise RuntimeError(f"evaluation: an episode did not end within {max_steps} steps")
    return results  # type: ignore[return-value]


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a saved run exactly as it was trained: its own config, network, normalization.

    Writes ``<run dir>/eval/results.json`` (per-episode return, length and seed; mean; std;
    seeds; checkpoint step) and, with ``video``, MP4s under ``<run dir>/eval/videos``.

    Raises:
        CheckpointError: the checkpoint does not exist, or cannot be read.
        ConfigError: the saved config or network does not fit (e.g. a checkpoint of another
            network than the saved config describes).
    """
    from ppo_lab.run import build_network, check_compatible, resolve_device, saved_config

    validate_evaluate(cfg)
    ckpt_path = find_checkpoint(cfg.checkpoint)
    state = load_checkpoint(ckpt_path)
    train_cfg = to_typed(saved_config(state))
    device = resolve_device(cfg.device)
    run_dir = run_dir_of(ckpt_path)
    out_dir = run_dir / "eval"
    probe = make_vec_env(train_cfg.env, 1)
    try:
        network = build_network(train_cfg, probe, device)
    finally:
        probe.close()
    check_compatible(state, network, ckpt_path)
    network.load_state_dict(state["model"])
    norm = normalization_from_tensors(state["normalization"])

    episodes = []
    for seed in cfg.eval_seeds:
        video_dir = str(out_dir / "videos" / f"seed_{seed}") if cfg.video else None
        results = evaluate_policy(network, train_cfg.env, cfg.eval_episodes, seed, cfg.deterministic,
                                  norm, video_dir=video_dir)
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


def _log_eval_to_wandb(cfg: EvaluateConfig, state: dict[str, Any], train_cfg: Any,
                       run_dir: Path, summary: dict[str, Any]) -> None:
    import wandb

    from ppo_lab.config import LoggerConfig
    from ppo_lab.loggers import WandbLogger

    trained_with = state["config"].get("logger", {})
    logger_cfg = LoggerConfig(project=cfg.logger.project or trained_with.get("project") or "ppo_lab",
                              entity=cfg.logger.entity or trained_with.get("entity"), mode=cfg.logger.mode)
    logger = WandbLogger(
        logger_cfg, run_dir,
        {"checkpoint": summary["checkpoint"], "train_run_id": state.get("wandb_run_id"),
         "deterministic": cfg.deterministic, "eval_seeds": list(cfg.eval_seeds)},
        name=f"eval_{train_cfg.env.id}_step{summary['global_step']}",
        group=state.get("wandb_group"), job_type="eval",
    )
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
