"""Rough edges found by trying ppo_lab as a new user would; each stays fixed."""

import math

import pytest
import yaml

from conftest import compose_cfg, run_script
from ppo_lab.config import ConfigError, to_typed


@pytest.mark.parametrize("key", ["agent.ent_coef", "agent.clip_coef", "agent.learning_rate",
                                 "agent.max_grad_norm", "agent.target_kl", "agent.vf_coef", "agent.gamma"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_hyperparameters_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}=-?(nan|inf) is not allowed: a finite number"):
        to_typed(compose_cfg([f"{key}={value}"]))


def test_finite_values_still_pass_and_target_kl_null_disables():
    typed = to_typed(compose_cfg(["agent.target_kl=0.02", "agent.ent_coef=0"]))
    assert typed.agent.target_kl == 0.02 and math.isfinite(typed.agent.ent_coef)
    assert to_typed(compose_cfg(["agent.target_kl=null"])).agent.target_kl is None


@pytest.mark.parametrize("arg, hint", [
    ("+agent.clip_cof=0.1", "(did you mean clip_coef?)"),
    ("+agent.foo=1", "; allowed keys of agent:"),
    ("+env.nomalize_obs=true", "(did you mean normalize_obs?)"),
])
def test_new_keys_under_schema_nodes_are_refused_in_process(arg, hint):
    """Composed configs (tests, the API) go through the same check as the command line."""
    with pytest.raises(ConfigError, match="unknown key") as err:
        to_typed(compose_cfg([arg]))
    assert hint in str(err.value) and "clip_coef" in str(compose_cfg([]).agent)


@pytest.mark.parametrize("args, expected", [
    (["+agent.clip_cof=0.1"], "unknown key agent.clip_cof in '+agent.clip_cof=0.1' (did you mean clip_coef?); allowed keys of agent: action_masking, adam_eps"),
    (["env.num_envs=4"], "unknown key env.num_envs in 'env.num_envs=4' (did you mean agent.num_envs?)"),
    (["env.max_episode_steps=0"], "env.max_episode_steps=0 is not allowed: a positive number of env steps"),
    (["agent.ent_coef=nan"], "agent.ent_coef=nan is not allowed: a finite number"),
    (["env.id=ALE/Pong-v5"], "is an Atari id, made by the atari family; allowed: an Atari env config (env=breakout, env=pong)"),
    (["env=schema"], "Could not find 'env/schema'"),
])
def test_bad_input_on_the_command_line_stops_before_training(tmp_path, args, expected):
    proc = run_script("train.py", ["debug=fast", "hydra.run.dir=run", *args], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_help_lists_no_schema_option(tmp_path):
    proc = run_script("train.py", ["--help"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "env: " in proc.stdout
    assert "schema" not in proc.stdout


def test_cfg_job_shows_the_value_the_run_uses(tmp_path):
    proc = run_script("train.py", ["--cfg", "job", "env=lunarlander", "agent.clip=0.1", "agent.lr=0.001"],
                      cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    agent = yaml.safe_load(proc.stdout)["agent"]
    assert agent["clip_coef"] == 0.1 and agent["learning_rate"] == 0.001
    assert agent["clip"] is None and agent["lr"] is None


def test_resume_stays_in_its_run_dir_and_accepts_the_runs_own_group_choice(tmp_path):
    first = run_script("train.py", ["debug=fast", "logger=none", "hydra.run.dir=run"], cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    hydra_record = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    again = run_script("train.py", ["resume=run", "logger=none", "total_timesteps=4096"], cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"run dir: {tmp_path / 'run'}" in again.stdout
    assert not (tmp_path / "outputs").exists()  # no stray dir with .hydra/ and a log
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == hydra_record
    changed = run_script("train.py", ["resume=run", "logger=wandb"], cwd=tmp_path, timeout=120)
    assert changed.returncode == 2
    assert "cannot change a resumed run" in changed.stderr and "logger=none" in changed.stderr
