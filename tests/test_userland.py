"""A user's own code plugged in from the command line, end to end as `python train.py ...`.

tests/userland/ is a fake user project (not part of ppo_lab), put on sys.path through PYTHONPATH
as a user's project would be: an env registered at import (myenv), a wrapper (mywrappers), a
network (mynets), a metric sink (mysinks) and a callback (mycallbacks). The README's "Extending
ppo_lab" section shows the same commands; the last test runs them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_script
from ppo_lab.io.checkpoint import load_checkpoint

USERLAND = ROOT / "tests" / "userland"

# The user-facing arguments of each command, exactly as the README's "Extending ppo_lab" shows
# them after `PYTHONPATH=tests/userland python train.py` (test_readme_extending_commands_run
# checks that each README command is one of these).
ENV = ["env.id=myenv:MyCorridor-v0"]
WRAPPER = [*ENV, "env.wrappers=[mywrappers.ScaleObservation]"]
WRAPPER_KWARGS = [*ENV, "env.wrappers=[{_target_: mywrappers.ScaleObservation, factor: 3.0}, "
                        "gymnasium.wrappers.TimeAwareObservation]"]
NETWORK = ["network._target_=mynets.MyNet", "+network.width=16"]
SINK = ["+logger.csv._target_=mysinks.CsvSink"]
CALLBACK = ["+callbacks.mine._target_=mycallbacks.StopAfter", "+callbacks.mine.updates=3"]
README_ARGS = [ENV, WRAPPER, WRAPPER_KWARGS, NETWORK, SINK, CALLBACK]

BATCH = 128  # debug=fast: 2 envs x 64 steps


def userland_env(**extra: str) -> dict[str, str]:
    """The user's project first on PYTHONPATH, the existing entries (ppo_lab) kept."""
    existing = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(USERLAND), existing) if p), **extra}


def train(tmp_path: Path, *args: str, **env: str):
    """`python train.py debug=fast hydra.run.dir=run <args>` from ``tmp_path``; (proc, run dir)."""
    proc = run_script("train.py", ["debug=fast", "hydra.run.dir=run", *args], cwd=tmp_path,
                      timeout=120, env=userland_env(**env))
    return proc, tmp_path / "run"


def assert_ok(proc) -> None:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])


def assert_refused(proc, run: Path, *fragments: str) -> None:
    """Exit 2, one `error: ...` line naming ``fragments``, no traceback, nothing trained."""
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "error: " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr[-3000:])
    assert not (run / "checkpoints").exists()


def jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def model_shapes(run: Path) -> dict[str, tuple[int, ...]]:
    state = load_checkpoint(run / "checkpoints" / "final.pt")["model"]
    return {k: tuple(v.shape) for k, v in state.items()}


# ---------------------------------------------------------------------------- 1. env ids


def test_user_env_id_imports_the_module_and_learns(tmp_path):
    proc, run = train(tmp_path, *ENV, "logger=none", "total_timesteps=5120")
    assert_ok(proc)
    assert (run / "checkpoints" / "final.pt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["env"]["id"] == "myenv:MyCorridor-v0"
    assert load_checkpoint(run / "checkpoints" / "final.pt")["config"]["env"]["id"] == "myenv:MyCorridor-v0"
    # Corridor obs is (1,): the built-in MLP's first layer reads one input.
    assert model_shapes(run)["actor_trunk.layers.0.weight"] == (64, 1)
    # It learns: the goal is 5 steps right; a random walk needs ~15 (first update).
    lengths = [r["charts/episodic_length"] for r in jsonl(run) if r.get("charts/episodic_length") is not None]
    assert lengths[0] > 8 and sum(lengths[-3:]) / 3 <= 6, lengths
    assert re.search(r"eval/episodic_return=1\.0 ", proc.stdout), proc.stdout


@pytest.mark.parametrize("env_id, fragments", [
    ("nosuchmodule:X-v0", ["env.id='nosuchmodule:X-v0'", "importing module 'nosuchmodule' failed",
                           "ModuleNotFoundError"]),
    ("myenv:Nope-v0", ["env.id='myenv:Nope-v0' is not a registered gymnasium id"]),
])
def test_bad_user_env_id_is_refused_before_training(tmp_path, env_id, fragments):
    proc, run = train(tmp_path, f"env.id={env_id}")
    assert_refused(proc, run, *fragments)
    assert not (run / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------- 2. wrappers


def wrapper_resets(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "wrapper_resets.jsonl").read_text().splitlines()]


def test_wrapper_by_dotted_path_wraps_training_and_evaluation_envs(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    proc, run = train(tmp_path, *WRAPPER, USERLAND_LOG=str(log_dir))
    assert_ok(proc)
    resets = wrapper_resets(log_dir)
    assert {r["factor"] for r in resets} == {2.0}  # the wrapper's default kwarg
    # Training envs are reset with seed + i (seed=1, 2 envs), evaluation envs with eval_seed + k
    # (10000, 2 episodes): both went through the user's wrapper.
    assert {r["seed"] for r in resets if r["seed"] is not None} == {1, 2, 10000, 10001}
    assert yaml.safe_load((run / "config.yaml").read_text())["env"]["wrappers"] == ["mywrappers.ScaleObservation"]


def test_wrapper_target_dict_kwargs_and_a_gymnasium_wrapper_shape_the_network_input(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    proc, run = train(tmp_path, *WRAPPER_KWARGS, USERLAND_LOG=str(log_dir))
    assert_ok(proc)
    resets = wrapper_resets(log_dir)
    assert {r["factor"] for r in resets} == {3.0}  # the kwarg reached the constructor
    assert {r["seed"] for r in resets if r["seed"] is not None} == {1, 2, 10000, 10001}
    # TimeAwareObservation appends the time step: obs (1,) -> (2,) in the network the training
    # envs built; the final evaluation ran that network, so its envs had (2,) too.
    shapes = model_shapes(run)
    assert shapes["actor_trunk.layers.0.weight"] == (64, 2)
    assert shapes["critic_trunk.layers.0.weight"] == (64, 2)
    assert any(r.get("eval/episodic_return") is not None for r in jsonl(run))


def test_wrapper_bad_kwarg_is_refused_naming_the_key(tmp_path):
    proc, run = train(tmp_path, *ENV, "env.wrappers=[{_target_: mywrappers.ScaleObservation, factr: 3}]")
    assert_refused(proc, run, "unknown key env.wrappers[0].factr for mywrappers.ScaleObservation",
                   "did you mean factor?")


def test_wrapper_env_argument_is_not_offered_as_a_config_key():
    """The wrapped env is passed by position at run time: never a config key."""
    import sys

    from ppo_lab.config import ConfigError, EnvConfig
    from ppo_lab.envs.factory import check_env

    sys.path.insert(0, str(USERLAND))
    try:
        with pytest.raises(ConfigError) as bad_kwarg:
            check_env(EnvConfig(wrappers=[{"_target_": "mywrappers.ScaleObservation", "factr": 3}]))
        assert "allowed keys: factor" in str(bad_kwarg.value), str(bad_kwarg.value)
        with pytest.raises(ConfigError, match=r"env.wrappers\[0\].env is set by ppo_lab at run time"):
            check_env(EnvConfig(wrappers=[{"_target_": "mywrappers.ScaleObservation", "env": 1}]))
    finally:
        sys.path.remove(str(USERLAND))


# ---------------------------------------------------------------------------- 3. networks


def test_user_network_with_its_own_kwarg_trains(tmp_path):
    proc, run = train(tmp_path, *NETWORK, "total_timesteps=256")
    assert_ok(proc)
    # CartPole: obs (4,), Discrete(2); the user's layers at width 16, nothing of the built-in MLP.
    assert model_shapes(run) == {"body.0.weight": (16, 4), "body.0.bias": (16,), "pi.weight": (2, 16),
                                 "pi.bias": (2,), "v.weight": (1, 16), "v.bias": (1,)}
    network = yaml.safe_load((run / "config.yaml").read_text())["network"]
    assert network["_target_"] == "mynets.MyNet" and network["width"] == 16


def test_network_without_the_protocol_is_refused_listing_what_is_missing(tmp_path):
    proc, run = train(tmp_path, "network._target_=mynets.BrokenNet")
    assert_refused(proc, run, "network._target_=mynets.BrokenNet does not meet the network protocol",
                   "missing evaluate_actions, inference_policy, after_optimizer_step, policy_stats, continuous, dist",
                   "ActorCriticBase")


def test_network_kwarg_typo_is_refused_with_did_you_mean(tmp_path):
    proc, run = train(tmp_path, "network._target_=mynets.MyNet", "+network.widht=16")
    assert_refused(proc, run, "unknown key network.widht for mynets.MyNet", "did you mean width?")


# ---------------------------------------------------------------------------- 4. sinks


@pytest.mark.parametrize("logger", ["logger=[tensorboard]", "logger=[wandb,tensorboard]", "logger=none"])
def test_logger_selection_writes_what_it_names(tmp_path, logger):
    proc, run = train(tmp_path, logger, "total_timesteps=256")
    assert_ok(proc)
    steps = [r["global_step"] for r in jsonl(run) if "train/policy_loss" in r]
    assert steps == [BATCH, 2 * BATCH]  # metrics.jsonl is always written
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert bool(events) == ("tensorboard" in logger), events
    assert bool(offline) == ("wandb" in logger), offline
    if "tensorboard" in logger:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / "tensorboard"))
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/policy_loss")] == [BATCH, 2 * BATCH]
    if "wandb" in logger:
        from wandb_offline import offline_run

        assert {"train/policy_loss", "eval/episodic_return"} <= offline_run(run)["history_keys"]
    else:
        assert not (run / "wandb").exists()


def test_user_sink_writes_its_csv_beside_metrics_jsonl(tmp_path):
    proc, run = train(tmp_path, *SINK, "total_timesteps=512")
    assert_ok(proc)
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"global_step", "key", "value"}
    assert sorted({int(r["global_step"]) for r in rows}) == [BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH]
    by_key = {(int(r["global_step"]), r["key"]): float(r["value"]) for r in rows}
    # The same values as the always-on metrics.jsonl.
    for row in jsonl(run):
        for key in ("train/policy_loss", "eval/episodic_return"):
            if row.get(key) is not None:
                assert by_key[(row["global_step"], key)] == pytest.approx(row[key])
    assert (4 * BATCH, "eval/episodic_return") in by_key  # the final evaluation


# ---------------------------------------------------------------------------- 5. callbacks


def test_user_callback_sees_the_hooks_and_stops_training(tmp_path):
    proc, run = train(tmp_path, *CALLBACK)  # debug=fast: 16 updates unless stopped
    assert_ok(proc)
    assert "stopped by callbacks.mine" in proc.stdout, proc.stdout
    assert load_checkpoint(run / "checkpoints" / "final.pt")["global_step"] == 3 * BATCH
    hooks = json.loads((run / "hooks.json").read_text())
    assert [(h["hook"], h["global_step"]) for h in hooks] == [
        ("on_training_start", 0),
        ("on_update_end", BATCH), ("on_update_end", 2 * BATCH), ("on_update_end", 3 * BATCH),
        ("on_eval_end", 3 * BATCH),  # the final evaluation (eval_interval=0: no periodic one)
        ("on_training_end", 3 * BATCH),
    ]


# ---------------------------------------------------------------------------- 6. shipped callbacks


def test_stop_on_reward_stops_early(tmp_path):
    proc, run = train(tmp_path, "callbacks=[stop_on_reward]", "callbacks.stop_on_reward.reward_threshold=15",
                      "eval_interval=1")
    assert_ok(proc)
    assert "stopped by callbacks.stop_on_reward" in proc.stdout, proc.stdout
    final_step = load_checkpoint(run / "checkpoints" / "final.pt")["global_step"]
    assert final_step < 2048  # debug=fast's total_timesteps
    evals = [(r["global_step"], r["eval/episodic_return"]) for r in jsonl(run) if "eval/episodic_return" in r]
    periodic = evals[:-1]  # the last one is the final evaluation, at the same step
    assert evals[-1][0] == final_step == periodic[-1][0], evals
    # One evaluation per update until the first that reached the threshold; then it stopped.
    assert [step for step, _ in periodic] == list(range(BATCH, final_step + 1, BATCH)), evals
    assert periodic[-1][1] >= 15 and all(ret < 15 for _, ret in periodic[:-1]), evals


def test_stop_on_reward_without_periodic_evaluations_is_refused(tmp_path):
    proc, run = train(tmp_path, "callbacks=[stop_on_reward]", "eval_interval=0")
    assert_refused(proc, run, "callbacks.stop_on_reward", "eval_interval=0", "eval_interval=N")


def test_eval_video_writes_mp4s_and_logs_them_to_wandb(tmp_path):
    from wandb_offline import offline_run, wandb_records

    proc, run = train(tmp_path, "callbacks=[eval_video]", "callbacks.eval_video.every=2", "logger=wandb",
                      "total_timesteps=512")
    assert_ok(proc)
    mp4s = sorted((run / "videos").glob("update_*/*.mp4"))
    assert [p.parent.name for p in mp4s] == ["update_000002", "update_000004"]
    rows = [r for r in jsonl(run) if "eval/video" in r]
    assert [r["global_step"] for r in rows] == [2 * BATCH, 4 * BATCH]
    assert [Path(r["eval/video"]).resolve() for r in rows] == [p.resolve() for p in mp4s]
    # The offline W&B run holds both as video media (wandb stores a video as a nested value:
    # eval/video/{_type, path, sha256, size}), the files under its media/videos/.
    (offline,) = run.glob("wandb/offline-run-*")
    assert {"eval/video/_type", "eval/video/path"} <= offline_run(run)["history_keys"]
    videos = [json.loads(item.value_json) for record in wandb_records(next(offline.glob("run-*.wandb")))
              if record.WhichOneof("record_type") == "history" for item in record.history.item
              if list(item.nested_key)[:1] == ["eval/video"]]
    assert videos.count("video-file") == 2, videos
    paths = [v for v in videos if isinstance(v, str) and v.endswith(".mp4")]
    assert len(paths) == 2 and all((offline / "files" / p).is_file() for p in paths), paths


# ---------------------------------------------------------------------------- 7. the README


def readme_extending_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Extending ppo_lab\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_extending_commands_run(tmp_path):
    """Each command of the README's "Extending ppo_lab" section, from the repo root as written
    (PYTHONPATH=tests/userland, ppo_lab's own entries kept), with a tiny budget appended."""
    commands = readme_extending_commands()
    assert len(commands) == len(README_ARGS), commands
    for i, command in enumerate(commands):
        words = shlex.split(command, comments=True)
        assert words[:3] == ["PYTHONPATH=tests/userland", "python", "train.py"], command
        args = words[3:]
        assert args in README_ARGS, f"{command!r}: not one of the commands the tests run"
        run = tmp_path / f"readme_{i}"
        env = {"PYTHONPATH": os.pathsep.join(p for p in ("tests/userland", os.environ.get("PYTHONPATH", "")) if p)}
        proc = run_script("train.py", [*args, "debug=fast", "total_timesteps=512", f"hydra.run.dir={run}"], cwd=ROOT,
                          timeout=120, env=env)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
        assert (run / "checkpoints" / "final.pt").is_file(), command
    assert sorted(map(tuple, (shlex.split(c)[3:] for c in commands))) == sorted(map(tuple, README_ARGS))


def test_a_user_module_id_reaches_async_workers_started_by_spawn(tmp_path):
    """env.id=<module>:<EnvId> with env.vectorization=async under the spawn start method (the
    default on macOS and Windows): each worker imports the module through gymnasium.make."""
    code = ("import multiprocessing as mp, runpy, sys; mp.set_start_method('spawn'); "
            f"sys.argv=['train.py','env.id=myenv:MyCorridor-v0','debug=fast','total_timesteps=256',"
            f"'hydra.run.dir=run','env.vectorization=async']; runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": f"{USERLAND}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()
