"""Hugging Face Hub packages of a trained run: ``python -m ppo_lab.hub package|push``.

``package(run_dir, out_dir)`` writes what a model repo needs (no network):

* ``README.md``: the model card (YAML front matter: ``library_name: ppo_lab``, tags, a
  ``model-index`` with the mean reward), the env, the algorithm, the evaluation mean +- std over
  seeds, the exact training command, a ``ppo_lab.load`` snippet and the resolved config;
* ``model.safetensors``: the network's ``state_dict`` under its own keys, plus the normalization
  statistics as float64 tensors ``normalization.<obs|reward>.<mean|var|count>``; its metadata
  holds ``global_step`` and the env id;
* ``config.yaml``: the run's resolved config (the checkpoint's ``config``);
* ``checkpoint.json``: the source checkpoint, its ``global_step``/``iteration`` and the evaluation
  (per seed and per episode);
* ``replay.mp4``: one deterministic evaluation episode (gymnasium ``RecordVideo``; needs moviepy);
* ``policy.onnx``: the ONNX export, when ``ppo_lab.api.export`` is available.

``ppo_lab.load(<package dir>)`` builds the agent back from ``model.safetensors`` + ``config.yaml``
(the same network build as for a checkpoint), ``ppo_lab.load("hf://<user/name>")`` downloads the
repo first (:func:`download`). :func:`push` uploads a package with ``huggingface_hub``. The
upload and the download need the network: they are thin wrappers around ``upload_folder`` and
``snapshot_download``, tested with fakes only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from ppo_lab.api.agent import load
from ppo_lab.api.export import export_onnx
from ppo_lab.config import ConfigError
from ppo_lab.io.checkpoint import CheckpointError, load_checkpoint
from ppo_lab.io.package import (
    CONFIG_FILE,
    NORM_PREFIX,
    WEIGHTS_FILE,
    _huggingface_hub,
    _safetensors,
    check_repo_id,
    is_package,
)
from ppo_lab.training.evaluation import evaluate_policy

#: Every file ``package`` may write (replaced when re-packaging into the same dir).
PACKAGE_FILES = ("README.md", WEIGHTS_FILE, CONFIG_FILE, "checkpoint.json", "replay.mp4", "policy.onnx")
#: Default evaluation of a package: 3 seeds x 5 episodes, far apart so no episode repeats.
DEFAULT_EVAL_SEEDS = (10_000, 20_000, 30_000)
DEFAULT_EVAL_EPISODES = 5


# ------------------------------------------------------------------ writing a package
def _weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors (cloned: safetensors refuses the views of FlatAdam's shared buffer)
    plus the normalization statistics as float64 tensors under :data:`NORM_PREFIX`."""
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state["model"].items()}
    clash = [k for k in tensors if k.startswith(NORM_PREFIX)]
    if clash:
        raise ConfigError(f"the network has parameters named {clash[0]!r}: {NORM_PREFIX}* is reserved "
                          "for the normalization statistics in a Hub package")
    for group, stats in (state.get("normalization") or {}).items():
        for stat, value in stats.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
            tensors[f"{NORM_PREFIX}{group}.{stat}"] = tensor.detach().to(torch.float64).clone().contiguous()
    return tensors


def train_command(run_dir: Path, config: dict[str, Any]) -> Optional[str]:
    """``python train.py <overrides>`` from the run's ``.hydra/overrides.yaml``, else from the
    overrides its checkpoint recorded; None when neither is known."""
    overrides = None
    hydra_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if hydra_file.is_file():
        overrides = yaml.safe_load(hydra_file.read_text(encoding="utf-8")) or []
    elif config.get("overrides") is not None:
        overrides = config["overrides"]
    if overrides is None:
        return None
    return " ".join(["python train.py", *(shlex.quote(str(o)) for o in overrides)])


def _evaluation(agent: Any, seeds: Sequence[int], episodes: int) -> dict[str, Any]:
    per_seed = [agent.evaluate(episodes=episodes, seed=seed, deterministic=True) for seed in seeds]
    returns = np.array([e["return"] for r in per_seed for e in r["episodes"]])
    return {"deterministic": True, "eval_seeds": list(seeds), "episodes_per_seed": episodes,
            "mean_return": float(returns.mean()), "std_return": float(returns.std()),
            "per_seed": [{"seed": s, "mean_return": r["mean_return"], "std_return": r["std_return"]}
                         for s, r in zip(seeds, per_seed)],
            "episodes": [e for r in per_seed for e in r["episodes"]]}


def _record_replay(agent: Any, seed: int, out: Path) -> tuple[float, int]:
    """One deterministic evaluation episode (reset with ``seed``) as ``out`` (MP4)."""
    try:
        import moviepy  # noqa: F401 - gymnasium's RecordVideo writes MP4 through it
    except ImportError:
        raise RuntimeError('moviepy is missing (pip install -e ".[video]")') from None
    with tempfile.TemporaryDirectory() as tmp:
        video_dir = Path(tmp) / "video"
        (ret, length), = evaluate_policy(agent.network.inference_policy(), agent.cfg.env, 1, seed, True,
                                         agent.normalization, video_dir=str(video_dir))
        files = sorted(video_dir.glob("*.mp4"))
        if not files:
            raise RuntimeError("RecordVideo wrote no MP4")
        shutil.move(str(files[0]), out)
    return ret, length


def _algorithm(cfg: Any) -> str:
    loss = getattr(cfg.agent.loss, "value", cfg.agent.loss)
    return "PPO, clipped surrogate objective" if loss == "clip" else "PPO, adaptive KL penalty"


def model_card(agent: Any, config: dict[str, Any], evaluation: dict[str, Any], command: Optional[str],
               files: list[str], replay: Optional[tuple[float, int]], repo_id: Optional[str]) -> str:
    """The package's ``README.md``: Hub metadata (front matter) and the card's text."""
    env_id, mean, std = agent.cfg.env.id, evaluation["mean_return"], evaluation["std_return"]
    n = len(evaluation["episodes"])
    front = {
        "library_name": "ppo_lab",
        "tags": ["reinforcement-learning", "ppo", env_id, "deep-reinforcement-learning"],
        "model-index": [{
            "name": f"ppo-{env_id}",
            "results": [{
                "task": {"type": "reinforcement-learning", "name": "reinforcement-learning"},
                "dataset": {"name": env_id, "type": env_id},
                "metrics": [{"type": "mean_reward", "value": f"{mean:.2f} +/- {std:.2f}",
                             "name": "mean_reward", "verified": False}],
            }],
        }],
    }
    seeds = ", ".join(str(s) for s in evaluation["eval_seeds"])
    load_id = f"hf://{repo_id}" if repo_id else "hf://<user/name>"
    shown = {k: v for k, v in config.items() if k != "overrides"}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# PPO agent for {env_id}", "",
        f"A ppo_lab agent ({_algorithm(agent.cfg)}) trained for "
        f"{agent.global_step:,} env steps on `{env_id}` (gymnasium).", "",
        "## Evaluation", "",
        f"Mean return **{mean:.2f} ± {std:.2f}** over {n} episodes: seeds {seeds}, "
        f"{evaluation['episodes_per_seed']} episodes each (episode k of seed s reset with s + k), "
        "deterministic actions, the saved normalization frozen.", "",
        "| seed | mean return | std |", "|---:|---:|---:|",
        *(f"| {r['seed']} | {r['mean_return']:.2f} | {r['std_return']:.2f} |" for r in evaluation["per_seed"]),
        "",
    ]
    if replay is not None:
        lines += ["## Replay", "",
                  f"`replay.mp4`: one deterministic episode (seed {evaluation['eval_seeds'][0]}), "
                  f"return {replay[0]:.2f} over {replay[1]} steps.", "",
                  '<video src="replay.mp4" controls width="480"></video>', ""]
    lines += [
        "## Use it", "",
        "```python",
        "import ppo_lab",
        "",
        f'agent = ppo_lab.load("{load_id}")  # or the path of a local copy of this folder',
        "env = agent.make_env()",
        "obs, _ = env.reset(seed=0)",
        "action, _ = agent.predict(obs)  # the saved normalization is applied",
        "print(agent.evaluate(episodes=5)[\"mean_return\"])",
        "```", "",
    ]
    if "policy.onnx" in files:
        lines += ["`policy.onnx` runs without ppo_lab (`onnxruntime` alone): input `obs` (a batch of raw "
                  "observations), output `action` (deterministic, the normalization folded in).", ""]
    lines += [
        "## Train it again", "",
        "```bash",
        command or "# the run's overrides were not recorded: python train.py with the config below",
        "```", "",
        "## Files", "",
        *(f"- `{name}`" for name in files),
        "",
        "## Config", "",
        "The run's resolved config (`config.yaml`):", "",
        "```yaml",
        OmegaConf.to_yaml(OmegaConf.create(shown)).rstrip(),
        "```", "",
    ]
    return "\n".join(lines)


def _prepare_out(out_dir: Path, run_dir: Path) -> None:
    if out_dir.resolve() == Path(run_dir).resolve():
        raise ConfigError(f"out dir {out_dir} is the run dir: package into a dir of its own")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out dir {out_dir} is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_package(out_dir):
        raise ConfigError(f"out dir {out_dir} is not empty and holds no package: give a new or empty dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_FILES:  # re-packaging: nothing stale is left behind
        (out_dir / name).unlink(missing_ok=True)


def package(
    run_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str = "final",
    eval_seeds: Sequence[int] = DEFAULT_EVAL_SEEDS,
    eval_episodes: int = DEFAULT_EVAL_EPISODES,
    video: bool = True,
    onnx: bool = True,
    repo_id: Optional[str] = None,
    log: Any = None,
) -> dict[str, Any]:
    """Write a Hub package of a run (layout: the module's docstring).

    Args:
        run_dir: a run dir (or its checkpoint file), as ``ppo_lab.load`` takes it.
        out_dir: a new or empty dir, or an earlier package (its files are replaced).
        checkpoint: ``final``, ``best`` or ``latest`` (see ``ppo_lab.load``).
        eval_seeds: evaluation seeds; ``eval_episodes`` episodes each.
        video: record ``replay.mp4`` (skipped, with a warning, when it cannot be recorded).
        onnx: write ``policy.onnx`` (skipped, with a warning, when the exporter is unavailable).
        repo_id: the Hub repo it is meant for (shown in the card's ``load`` snippet).
        log: where warnings go (default: stderr).

    Returns:
        ``{"out_dir", "files", "evaluation", "warnings"}``.

    Raises:
        CheckpointError: the run dir or checkpoint does not exist.
        ConfigError: a bad argument, or an out dir that holds something else.
    """
    log = log or sys.stderr
    seeds = [eval_seeds] if isinstance(eval_seeds, int) else list(eval_seeds or [])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"eval_seeds={eval_seeds!r} is not allowed: a non-empty list of integers")
    if not isinstance(eval_episodes, int) or isinstance(eval_episodes, bool) or eval_episodes < 1:
        raise ConfigError(f"eval_episodes={eval_episodes!r} is not allowed: a positive integer")
    if repo_id is not None:
        check_repo_id(repo_id)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if is_package(run_dir):
        raise ConfigError(f"{run_dir} is already a Hub package; push it as it is")
    st = _safetensors()
    agent = load(run_dir, checkpoint=checkpoint)
    state = load_checkpoint(agent.checkpoint)
    _prepare_out(out_dir, agent.run_dir)
    config = dict(state["config"])
    warnings: list[str] = []

    st.save_file(_weights(state), str(out_dir / WEIGHTS_FILE),
                 metadata={"format": "pt", "library": "ppo_lab", "env_id": agent.cfg.env.id,
                           "global_step": str(int(state["global_step"]))})
    (out_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(config)), encoding="utf-8")
    evaluation = _evaluation(agent, seeds, eval_episodes)
    replay = None
    if video:
        try:
            replay = _record_replay(agent, seeds[0], out_dir / "replay.mp4")
        except Exception as exc:  # no renderer / no moviepy: the package is still usable
            hint = " (headless MuJoCo: set MUJOCO_GL=egl)" if "OpenGL" in str(exc) else ""
            warnings.append(f"no replay.mp4: {exc}{hint}")
    if onnx:
        try:
            export_onnx(agent, out_dir / "policy.onnx")
        except Exception as exc:
            (out_dir / "policy.onnx").unlink(missing_ok=True)
            warnings.append(f"no policy.onnx: {exc}")
    (out_dir / "checkpoint.json").write_text(json.dumps({
        "source_checkpoint": str(agent.checkpoint), "global_step": int(state["global_step"]),
        "iteration": int(state.get("iteration", 0)), "env_id": agent.cfg.env.id,
        "best_eval_return": float(state.get("best_eval_return", float("nan"))),
        "evaluation": evaluation,
    }, indent=2), encoding="utf-8")
    files = sorted(p.name for p in out_dir.iterdir() if p.name in PACKAGE_FILES) + ["README.md"]
    (out_dir / "README.md").write_text(
        model_card(agent, config, evaluation, train_command(agent.run_dir, config), sorted(files), replay, repo_id),
        encoding="utf-8")
    for warning in warnings:
        print(f"warning: {warning}", file=log)
    return {"out_dir": str(out_dir), "files": sorted(files), "evaluation": evaluation, "warnings": warnings}


def push(path: str | Path, repo_id: str, out_dir: Optional[str | Path] = None, private: bool = False,
         commit_message: Optional[str] = None, **package_kwargs: Any) -> Any:
    """Upload a package to the Hub model repo ``repo_id`` (created if missing): ``path`` itself
    when it is a package, else the package of the run ``path`` (written to ``out_dir``, or a
    temporary dir). Needs the network and a Hub token (``hf auth login`` / ``$HF_TOKEN``).

    Returns:
        ``huggingface_hub.upload_folder``'s commit info.
    """
    hub = _huggingface_hub()
    check_repo_id(repo_id)
    message = commit_message or "Upload ppo_lab agent"
    if is_package(path):
        hub.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return hub.upload_folder(repo_id=repo_id, folder_path=str(path), repo_type="model", commit_message=message)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp) / "package"
        package(path, folder, repo_id=repo_id, **package_kwargs)
        hub.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return hub.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=message)


# ------------------------------------------------------------------ command line
PACKAGE_OPTIONS = ("checkpoint", "eval_seeds", "eval_episodes", "video", "onnx", "repo_id")
PUSH_OPTIONS = PACKAGE_OPTIONS + ("out", "private", "commit_message")


def _options(items: Sequence[str], allowed: Sequence[str]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r} is not an option: key=value, one of {', '.join(allowed)}")
        if key not in allowed:
            raise ConfigError(f"unknown option {key!r}; allowed: {', '.join(allowed)}")
        parsed = yaml.safe_load(value) if value else None
        options[key] = value if key in ("repo_id", "out", "commit_message", "checkpoint") else parsed
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m ppo_lab.hub package <run dir> <out dir> [key=value ...]`` or
    ``python -m ppo_lab.hub push <run or package dir> repo_id=<user/name> [key=value ...]``;
    returns the exit status (2: bad input, 1: the upload failed)."""
    parser = argparse.ArgumentParser(prog="python -m ppo_lab.hub",
                                     description="Package a trained run for the Hugging Face Hub, or push it there.")
    commands = parser.add_subparsers(dest="command", required=True)
    pkg = commands.add_parser("package", help="write a Hub package of a run (no network)")
    pkg.add_argument("run_dir")
    pkg.add_argument("out_dir")
    pkg.add_argument("options", nargs="*", help=f"key=value: {', '.join(PACKAGE_OPTIONS)}")
    up = commands.add_parser("push", help="package a run (or take a package) and upload it")
    up.add_argument("path")
    up.add_argument("options", nargs="*", help=f"key=value: {', '.join(PUSH_OPTIONS)} (repo_id required)")
    args = parser.parse_args(argv)
    try:
        if args.command == "package":
            result = package(args.run_dir, args.out_dir, **_options(args.options, PACKAGE_OPTIONS))
            ev = result["evaluation"]
            print(f"wrote {result['out_dir']}: {', '.join(result['files'])}; mean return "
                  f"{ev['mean_return']:.2f} +- {ev['std_return']:.2f} over {len(ev['episodes'])} episodes")
            return 0
        options = _options(args.options, PUSH_OPTIONS)
        if "repo_id" not in options:
            raise ConfigError("push needs repo_id=<user or org>/<name> (the Hub model repo)")
        repo_id = check_repo_id(options.pop("repo_id"))
        if not Path(args.path).exists():
            raise CheckpointError(f"{args.path} does not exist")
        out = options.pop("out", None)
        try:
            push(args.path, repo_id, out_dir=out, **options)
        except (ConfigError, CheckpointError):
            raise
        except Exception as exc:  # network, auth, permissions: the Hub's own message
            print(f"error: push to {repo_id} failed: {exc}", file=sys.stderr)
            return 1
        print(f"pushed to https://huggingface.co/{repo_id}")
        return 0
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
