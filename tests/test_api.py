"""The Python API: ppo_lab.train -> ppo_lab.load -> Agent.predict / make_env / evaluate."""

import json

import gymnasium as gym
import numpy as np
import pytest

import ppo_lab
from conftest import run_script
from ppo_lab.config import ConfigError
from ppo_lab.io.checkpoint import CheckpointError

CHEETAH = ["env=halfcheetah", "total_timesteps=4096", "agent.num_minibatches=4", "logger=none",
           "progress=false", "eval_episodes=2"]


@pytest.fixture(scope="module")
def cheetah_run(tmp_path_factory):
    """A normalized MuJoCo run trained through ppo_lab.train."""
    run_dir = tmp_path_factory.mktemp("api") / "cheetah"
    result = ppo_lab.train(CHEETAH, run_dir=run_dir)
    return run_dir, result


def test_the_public_api_is_importable_from_the_package():
    assert {"load", "train", "Agent"} <= set(dir(ppo_lab))
    assert ppo_lab.Agent.__name__ == "Agent"


def test_train_returns_the_result_of_train_py_and_leaves_a_normal_run_dir(cheetah_run):
    run_dir, result = cheetah_run
    assert result["run_dir"] == str(run_dir) and result["global_step"] == 4096
    assert {"eval/episodic_return", "eval/episodic_return_std", "time/wall_s"} <= set(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval/episodic_return"] == result["eval/episodic_return"]
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / "checkpoints" / "final.pt").is_file()
    with pytest.raises(ConfigError, match="did you mean clip_coef"):
        ppo_lab.train(["+agent.clip_cof=0.1"], run_dir=run_dir / "bad")
    assert not (run_dir / "bad").exists()


def test_agent_evaluate_equals_evaluate_py_on_a_normalized_mujoco_run(cheetah_run, tmp_path):
    run_dir, _ = cheetah_run
    proc = run_script("evaluate.py", [f"checkpoint={run_dir}", "eval_episodes=3", "eval_seeds=[7]",
                                      "logger.kind=none"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = json.loads((run_dir / "eval" / "results.json").read_text())
    agent = ppo_lab.load(run_dir)
    assert agent.normalization["obs"]["mean"].shape == (17,)  # the saved statistics, loaded
    ours = agent.evaluate(episodes=3, seed=7)
    assert [e["return"] for e in ours["episodes"]] == [e["return"] for e in cli["episodes"]]
    assert ours["mean_return"] == cli["mean_return"]


def test_predict_on_make_env_replays_the_evaluation_episode(cheetah_run):
    """predict normalizes raw observations with the frozen statistics and clips actions: an
    episode acted through it equals the evaluation episode of the same seed."""
    agent = ppo_lab.load(cheetah_run[0])
    env = agent.make_env()
    obs, _ = env.reset(seed=11)
    total, done = 0.0, False
    while not done:
        action, state = agent.predict(obs)
        assert state is None and action.shape == (6,) and action.dtype == np.float32
        assert np.all(np.abs(action) <= 1.0)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, done = total + reward, terminated or truncated
    env.close()
    expected = agent.evaluate(episodes=1, seed=11)["mean_return"]
    assert total == pytest.approx(expected, rel=1e-5, abs=1e-5)
    raw = agent.predict(np.zeros((4, 17)))[0]
    assert raw.shape == (4, 6)
    unnormalized = agent.network.inference_policy().act(np.zeros((4, 17), np.float32), None, True)[0]
    assert not np.allclose(raw, np.clip(unnormalized, -1, 1))  # the statistics were applied


def test_predict_discrete_single_and_batch_and_its_errors(tmp_path):
    ppo_lab.train(["debug=fast", "total_timesteps=256"], run_dir=tmp_path / "cp")
    agent = ppo_lab.load(tmp_path / "cp", checkpoint="best")
    assert agent.checkpoint.name == "best.pt"
    action, _ = agent.predict(np.zeros(4, np.float32))
    assert action.shape == () and action.dtype == np.int64 and int(action) in (0, 1)
    batch, _ = agent.predict(np.zeros((5, 4), np.float32), deterministic=False)
    assert batch.shape == (5,)
    with pytest.raises(ValueError, match=r"obs has shape \(3,\); allowed: \(4,\)"):
        agent.predict(np.zeros(3))
    masked, _ = agent.predict(np.zeros((5, 4), np.float32), deterministic=False,
                              action_masks=np.array([1, 0], np.int8))  # CartPole: only action 0 allowed
    np.testing.assert_array_equal(masked, np.zeros(5))
    with pytest.raises(ValueError, match=r"action_masks has shape \(3,\); allowed: \(2,\) or \(1, 2\)"):
        agent.predict(np.zeros(4), action_masks=np.ones(3, bool))
    assert isinstance(agent.make_env(), gym.Env)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ppo_lab.load(tmp_path / "nowhere")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ppo_lab.load(tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="checkpoint='worst' is not allowed: final, best or latest"):
        ppo_lab.load(tmp_path, checkpoint="worst")
