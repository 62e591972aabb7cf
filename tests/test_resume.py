"""Runs that survive: resume equals an uninterrupted run; SIGTERM saves and resumes; NaN guard."""

import json
import os
import signal

import pytest
import torch

from conftest import compose_cfg, run_script, sigterm_once_training
from ppo_lab.io.checkpoint import load_checkpoint
from ppo_lab.config import ConfigError
from ppo_lab.commands.train import train
from ppo_lab.training.trainer import Trainer, TrainingDiverged, TrainingInterrupted

OVERRIDES = ["logger=none", "progress=false", "agent.num_envs=4", "agent.num_steps=64",
             "total_timesteps=5120", "checkpoint_interval=5", "eval_episodes=2", "seed=3"]


class SignalAt:
    """A metric sink that sends this process SIGTERM when global_step reaches ``step``
    (the trainer's own handler then checkpoints at the end of that update)."""

    def __init__(self, step):
        self.step = step

    def log(self, metrics, step):
        if step == self.step and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    def summary(self, values):
        pass

    def finish(self, exit_code=0):
        pass


def train_until_sigterm(monkeypatch, overrides, run_dir, step, match=None):
    """Train ``overrides`` into ``run_dir``, stopped by a real SIGTERM at ``global_step == step``
    (the trainer checkpoints at the end of that update and raises TrainingInterrupted)."""
    original_init = Trainer.__init__

    def init_with_signal(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.sinks.sinks["signal"] = SignalAt(step)

    monkeypatch.setattr(Trainer, "__init__", init_with_signal)
    with pytest.raises(TrainingInterrupted, match=match):
        train(compose_cfg(overrides), run_dir)
    monkeypatch.setattr(Trainer, "__init__", original_init)


def steps_logged(run_dir):
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["global_step"] for r in rows if "train/loss" in r]


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    full, parted = tmp_path / "full", tmp_path / "parted"
    train(compose_cfg(OVERRIDES), full)

    # Interrupt the second run by a real SIGTERM at update 7 (global_step 1792).
    train_until_sigterm(monkeypatch, OVERRIDES, parted, 7 * 256, match=f"Resume with: python train.py resume={parted}")
    assert load_checkpoint(parted / "checkpoints" / "update_000007.pt")["iteration"] == 7

    train(compose_cfg(["logger=none", f"resume={parted}"]), tmp_path / "ignored")
    assert steps_logged(parted) == steps_logged(full) == [256 * i for i in range(1, 21)]
    a = load_checkpoint(full / "checkpoints" / "final.pt")
    b = load_checkpoint(parted / "checkpoints" / "final.pt")
    assert a["global_step"] == b["global_step"] == 5120
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    # The smoothed return carries over the resume (its last 20 episodes are in the checkpoint).
    assert smoothed_returns(parted) == smoothed_returns(full)
    # The thread count is resolved once and recorded, so a resume elsewhere uses the same one.
    assert a["config"]["torch_threads"] == 1


def smoothed_returns(run_dir):
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["global_step"], r.get("charts/episodic_return_last20")) for r in rows if "train/loss" in r]


def test_sigterm_in_subprocess_saves_checkpoint_and_resume_finishes(tmp_path):
    args = ["logger=wandb", "progress=false", "total_timesteps=2000000", "checkpoint_interval=100000",
            "hydra.run.dir=run"]
    returncode, err = sigterm_once_training(args, tmp_path, tmp_path / "run" / "metrics.jsonl")
    assert returncode == 130, err[-2000:]
    assert "SIGTERM received" in err and "resume=" in err
    ckpts = list((tmp_path / "run" / "checkpoints").glob("update_*.pt"))
    assert len(ckpts) == 1
    step = load_checkpoint(ckpts[0])["global_step"]
    # The W&B run was finished (its offline files closed) and continues under the same id.
    run_id = load_checkpoint(ckpts[0])["sinks"]["wandb"]["run_id"]
    assert run_id and list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}"))
    done = run_script("train.py", [f"resume={tmp_path / 'run'}", f"total_timesteps={step + 2560}",
                                   "eval_episodes=2"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.pt")
    assert final["global_step"] == step + 2560 - (step + 2560) % 256
    assert final["sinks"]["wandb"]["run_id"] == run_id
    first = load_checkpoint(ckpts[0])
    assert final["sinks"]["wandb"] == first["sinks"]["wandb"]  # same id, name and group
    assert "resume=" not in final["sinks"]["wandb"]["name"]


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import ppo_lab.training.population as population_mod

    real = population_mod.ppo_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 3 * 20:  # updates 1-3 are fine (20 epochs x 1 minibatch each)
            out["value_loss"] = out["value_loss"] * float("nan")
        return out

    monkeypatch.setattr(population_mod, "ppo_losses", poisoned)
    cfg = compose_cfg(["logger=none", "progress=false", "total_timesteps=2560", "checkpoint_interval=2"])
    with pytest.raises(TrainingDiverged, match=r"update 4 \(global_step 1024\): train/loss is nan"):
        train(cfg, tmp_path)
    kept = load_checkpoint(tmp_path / "checkpoints" / "update_000002.pt")
    assert kept["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_resume_from_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    proc = run_script("train.py", [f"resume={tmp_path / 'nope'}", "logger=none"], cwd=tmp_path)
    assert proc.returncode == 2 and "error: checkpoint path" in proc.stderr and "does not exist" in proc.stderr
    empty = tmp_path / "empty_run"
    empty.mkdir()
    proc = run_script("train.py", [f"resume={empty}", "logger=none"], cwd=tmp_path)
    assert proc.returncode == 2 and "no checkpoint found in" in proc.stderr
    bad = tmp_path / "badrun" / "checkpoints" / "update_000001.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    before = bad.read_bytes()
    proc = run_script("train.py", [f"resume={bad.parent.parent}", "logger=none"], cwd=tmp_path)
    assert proc.returncode == 2 and f"checkpoint {bad} is corrupt or truncated" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert bad.read_bytes() == before and sorted(p.name for p in bad.parent.iterdir()) == ["update_000001.pt"]


def test_resume_with_mismatched_network_is_refused(tmp_path):
    cfg = compose_cfg(["logger=none", "progress=false", "total_timesteps=512", "eval_episodes=1"])
    train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="network does not match"):
        train(compose_cfg(["logger=none", f"resume={tmp_path / 'run'}"]), tmp_path / "x",
              overrides=[f"resume={tmp_path / 'run'}", "network.hidden_sizes=[32]"])
    for bad in ("env=lunarlander", "hparams_search=cartpole_optuna", "~agent.target_kl"):
        with pytest.raises(ConfigError, match=r"cannot change a resumed run \(group choices and deletions\)"):
            train(compose_cfg(["logger=none", f"resume={tmp_path / 'run'}"]), tmp_path / "x",
                  overrides=[f"resume={tmp_path / 'run'}", bad])


def test_a_checkpoint_whose_env_state_does_not_fit_resumes_with_fresh_episodes(tmp_path, caplog):
    """A classic-control checkpoint whose env-state snapshot was taken of another wrapper stack
    (written before the stack changed) resumes with fresh episodes and a warning, instead of
    refusing to load. Catches the snapshot being loaded into the wrong objects or the resume
    failing."""
    from ppo_lab.io.checkpoint import save_checkpoint

    overrides = ["env=pendulum", "logger=none", "progress=false", "agent.num_envs=2", "agent.num_steps=64",
                 "total_timesteps=512", "checkpoint_interval=1", "eval_episodes=1"]
    run = tmp_path / "run"
    train(compose_cfg(overrides), run)
    path = sorted((run / "checkpoints").glob("update_*.pt"))[0]
    state = load_checkpoint(path)
    assert state["global_step"] < 512
    assert state["env_state"] is not None  # classic control: exact env state
    state["env_state"] = state["env_state"] + [{"stale": 1.0}]
    save_checkpoint(state, path)
    for final in (run / "checkpoints").glob("final.pt"):
        final.unlink()
    with caplog.at_level("WARNING", logger="ppo_lab"):
        train(compose_cfg(["logger=none", f"resume={path}"]), tmp_path / "ignored")
    assert "another wrapper stack" in caplog.text
    assert load_checkpoint(run / "checkpoints" / "final.pt")["global_step"] == 512
