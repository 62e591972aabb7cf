"""Bad input stops before training with a message naming the key, the value and what is allowed."""

import pytest

from conftest import run_script


@pytest.mark.parametrize(
    "args, expected",
    [
        (["env=nope"], ["Could not find 'env/nope'", "cartpole", "lunarlander"]),
        (["agent.foo=1"], ["error: unknown key agent.foo in 'agent.foo=1'; allowed keys of agent:",
                           "clip_coef", "num_minibatches"]),
        (["evn.id=CartPole-v1"], ["error: unknown key evn", "allowed keys of the top level:", "env,"]),
        (["agent.num_envs=many"], ["agent.num_envs", "many"]),
        (["agent.clip_coef=0"], ["error: agent.clip_coef=0.0 is not allowed: must be > 0"]),
        (["torch_threads=0"], ["error: torch_threads=0 is not allowed: must be a positive integer"]),
        (["agent.num_minibatches=7"], ["error: agent.num_minibatches=7 does not divide batch_size=256"]),
        (["action=continuous"], ["error: action=continuous does not fit the env's action space Discrete(2)",
                                 "allowed: action=discrete"]),
        (["env=pendulum", "action=discrete"], ["error: action=discrete does not fit", "allowed: action=continuous"]),
        (["env.id=NoSuchEnv-v0"], ["error: env.id='NoSuchEnv-v0' is not a registered gymnasium id"]),
        pytest.param(["device=cuda"], ["error: device='cuda' but CUDA is not available here; allowed: "
                                       "device=cpu or device=auto"],
                     marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is present")),
    ],
)
def test_bad_input_message_and_no_training(tmp_path, args, expected):
    proc = run_script("train.py", args + ["logger=none"], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("outputs/*/*/checkpoints"))


def test_a_run_dir_with_checkpoints_is_never_overwritten(tmp_path):
    first = run_script("train.py", ["debug=fast", "hydra.run.dir=run"], cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()}
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    hydra_before = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    again = run_script("train.py", ["debug=fast", "seed=2", "hydra.run.dir=run"], cwd=tmp_path, timeout=120)
    assert again.returncode == 2
    assert "already holds checkpoints of another run" in again.stderr and "resume=" in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()} == before
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text() == hydra_before
