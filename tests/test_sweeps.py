"""Hydra multiruns as a user runs them: job dirs, one offline W&B run per job in one group,
the joblib / submitit_local launchers, the Optuna search, and a sweep with a failing job.

Every sweep is a subprocess (``python train.py -m ... hydra.sweep.dir=<tmp>/sweep``) with a tiny
budget; W&B runs offline (``run_script`` sets WANDB_MODE=offline) and is read back from each run's
``.wandb`` datastore.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CONF, run_script
from hydra import compose, initialize_config_dir

from ppo_lab.commands.train import sweep_group
from wandb_offline import offline_run

TINY = ["debug=fast", "agent.num_envs=2", "agent.num_steps=64", "total_timesteps=256", "eval_episodes=2"]


def sweep(tmp_path: Path, *args: str, timeout: float = 300):
    """Run ``python train.py -m <TINY> <args>`` into ``tmp_path/sweep``; returns (process, sweep dir)."""
    sweep_dir = tmp_path / "sweep"
    proc = run_script("train.py", ["-m", *TINY, *args, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                      timeout=timeout)
    return proc, sweep_dir


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def overrides_of(job: Path) -> list[str]:
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def test_grid_sweep_gives_each_job_its_dir_and_one_wandb_group(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "logger=wandb", "agent.clip=0.1,0.2", "seed=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    runs = []
    for job in jobs:
        overrides = overrides_of(job)
        clip = float(next(o for o in overrides if o.startswith("agent.clip_coef=")).split("=")[1])
        seed = int(next(o for o in overrides if o.startswith("seed=")).split("=")[1])
        config = yaml.safe_load((job / "config.yaml").read_text())  # resolved: alias applied
        assert config["agent"]["clip_coef"] == clip and config["seed"] == seed
        assert config["overrides"] == overrides
        assert (job / "checkpoints" / "final.pt").is_file()
        summary = json.loads((job / "summary.json").read_text())
        run = offline_run(job)
        runs.append(run)
        assert run["job_type"] == "train"
        assert "sweep" in run["tags"] and "CartPole-v1" in run["tags"]
        assert run["exit_code"] == 0
        assert run["config"]["seed"] == seed and run["config"]["agent"]["clip_coef"] == clip
        assert run["config"]["overrides"] == overrides
        assert f"agent.clip_coef={clip}" in run["name"] and f"seed={seed}" in run["name"]
        # Every chart against global_step; final and best eval return in the run summary.
        assert run["step_metrics"].get("*") == "global_step"
        for key in ("eval/episodic_return", "eval/best_episodic_return"):
            assert run["summary"][key] == pytest.approx(summary[key])
    assert len({r["id"] for r in runs}) == 4, "each job needs a fresh W&B run"
    assert len({r["name"] for r in runs}) == 4
    assert {r["group"] for r in runs} == {sweep_group(sweep_dir)}


def test_jobs_in_one_process_do_not_leak_state(tmp_path):
    # The basic launcher runs both jobs in one process; equal seeds must give equal runs.
    proc, sweep_dir = sweep(tmp_path, "logger=none", "seed=3,3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = ([{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
                      for line in (job / "metrics.jsonl").read_text().splitlines()]
                     for job in job_dirs(sweep_dir))
    assert first and first == second


@pytest.mark.filterwarnings("ignore:(?s).*validated against ConfigStore schema with the same name")
def test_launcher_configs_are_well_formed():
    launchers = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "hydra" / "launcher").glob("*.yaml")}
    assert {"joblib", "submitit_local", "submitit_slurm", "ray"} <= set(launchers)
    for name, cfg in launchers.items():
        assert cfg["_target_"].startswith("hydra_plugins."), name
    assert launchers["ray"]["_target_"] == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert set(launchers["ray"]["ray"]) == {"init", "remote"}
    # The installed plugins accept ours (each file is merged onto the plugin's schema).
    for name in ("joblib", "submitit_local", "submitit_slurm"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed = compose("train", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
        assert composed.hydra.launcher._target_ == launchers[name]["_target_"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launcher_runs_a_two_job_sweep(tmp_path, launcher):
    proc, sweep_dir = sweep(tmp_path, f"hydra/launcher={launcher}", "seed=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    multirun = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
    expected = yaml.safe_load((CONF / "hydra" / "launcher" / f"{launcher}.yaml").read_text())["_target_"]
    assert multirun["hydra"]["launcher"]["_target_"] == expected
    jobs = job_dirs(sweep_dir)
    assert [[o for o in overrides_of(j) if o.startswith("seed=")] for j in jobs] == [["seed=1"], ["seed=2"]]
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["global_step"] == 256
        assert (job / "checkpoints" / "final.pt").is_file()
    if launcher == "submitit_local":
        assert any((sweep_dir / ".submitit").iterdir()), "submitit writes its job folders there"


def test_optuna_search_maximizes_final_eval_return(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "hparams_search=cartpole_optuna", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    returns = [json.loads((j / "summary.json").read_text())["eval/episodic_return"] for j in jobs]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(returns))
    assert set(result["best_params"]) == {"agent.learning_rate", "agent.clip_coef", "agent.ent_coef",
                                          "agent.gae_lambda"}


def test_failed_job_keeps_finished_outputs_and_its_wandb_run_is_marked_failed(tmp_path):
    # Job 0 trains; job 1 diverges (lr 1e30) after its W&B run started.
    proc, sweep_dir = sweep(tmp_path, "logger=wandb", "agent.learning_rate=2.5e-4,1e30")
    assert proc.returncode != 0
    assert "stopped:" in proc.stderr and "is nan" in proc.stderr
    done, failed = job_dirs(sweep_dir)
    assert (done / "summary.json").is_file() and (done / "checkpoints" / "final.pt").is_file()
    assert offline_run(done)["exit_code"] == 0
    assert not (failed / "summary.json").exists()
    assert offline_run(failed)["exit_code"] == 1


def test_config_error_fails_only_its_job_and_names_its_overrides(tmp_path):
    proc, sweep_dir = sweep(tmp_path, "agent.clip_coef=0,0.2")
    assert proc.returncode != 0
    assert "error: agent.clip_coef=0.0 is not allowed" in proc.stderr
    named = [line for line in proc.stderr.splitlines() if "Error executing job with overrides" in line]
    assert named and "agent.clip_coef=0'" in named[0]
    bad, good = job_dirs(sweep_dir)
    assert not (bad / "summary.json").exists()
    assert (good / "summary.json").is_file(), "the other jobs of the sweep still run"


def test_sigterm_stops_the_whole_sweep_not_just_its_job(tmp_path):
    from conftest import sigterm_once_training

    sweep_dir = tmp_path / "sweep"
    returncode, err = sigterm_once_training(
        ["-m", "seed=1,2,3", "logger=none", "progress=false", "total_timesteps=2000000",
         f"hydra.sweep.dir={sweep_dir}"], tmp_path, sweep_dir / "0" / "metrics.jsonl")
    assert returncode != 0
    assert "SIGTERM received" in err
    assert list((sweep_dir / "0" / "checkpoints").glob("update_*.pt"))
    assert not (sweep_dir / "1").exists(), "the sweep went on to the next job"
