"""evaluate.py, run as a user would, on a saved run."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import compose_cfg, run_script
from ppo_lab.io.checkpoint import load_checkpoint, save_checkpoint
from ppo_lab.config import ConfigError, EvaluateConfig
from ppo_lab.commands.evaluate import evaluate_checkpoint
from ppo_lab.commands.train import train


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    result = train(compose_cfg(["logger=none", "progress=false", "total_timesteps=30000"]), run)
    return run, result


def test_evaluate_saved_run_reaches_training_return(cartpole_run, tmp_path):
    run, result = cartpole_run
    proc = run_script("evaluate.py", [f"checkpoint={run}", "eval_seeds=[10000]", "logger.kind=wandb"],
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mean return" in proc.stdout
    out = json.loads((run / "eval" / "results.json").read_text())
    assert len(out["episodes"]) == 10 and out["global_step"] == int(result["global_step"])
    # Same seeds and deterministic policy as the training run's final evaluation: same return.
    assert out["mean_return"] == pytest.approx(result["eval/episodic_return"])
    assert out["checkpoint"].endswith("final.pt")
    assert list((run / "wandb").glob("offline-run-*"))  # eval run logged (job_type=eval)
    assert not list(tmp_path.iterdir())  # nothing written in the caller's cwd


def test_stochastic_evaluation_and_video(cartpole_run):
    run, _ = cartpole_run
    cfg = EvaluateConfig(checkpoint=str(run / "checkpoints" / "best.pt"), eval_episodes=2,
                         eval_seeds=[1, 50], deterministic=False, video=True)
    cfg.logger.kind = "none"
    out = evaluate_checkpoint(cfg)
    assert [e["seed"] for e in out["episodes"]] == [1, 2, 50, 51]
    assert out["deterministic"] is False
    assert len(out["videos"]) == 2 and all(v.endswith(".mp4") for v in out["videos"])


def test_overlapping_eval_seeds_are_refused(cartpole_run, tmp_path):
    run, _ = cartpole_run
    proc = run_script("evaluate.py", [f"checkpoint={run}", "eval_episodes=20", "eval_seeds=[1,2,3]",
                                      "logger.kind=none"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: eval_seeds=[1, 2, 3] overlap" in proc.stderr and "at least 20 apart" in proc.stderr


def test_evaluation_episode_k_uses_seed_s_plus_k_even_for_batched_cartpole():

    from ppo_lab.config import to_typed
    from ppo_lab.training.evaluation import evaluate_policy

    class FirstObs:
        """Records the first observations it is asked to act on; always pushes left."""

        first = None

        def act(self, obs, rng, deterministic):
            if self.first is None:
                self.first = obs.copy()
            return np.zeros(obs.shape[0], dtype=np.int64), None, None

        def inference_policy(self):
            return self

        def eval(self):
            pass

        training = False

        def train(self, mode):
            pass

    env_cfg = to_typed(compose_cfg(["logger=none"])).env
    assert env_cfg.vectorization == "vector_entry_point"  # training uses the batched CartPole
    net = FirstObs()
    evaluate_policy(net.inference_policy(), env_cfg, 3, seed=40)
    expected = np.stack([gym.make("CartPole-v1").reset(seed=40 + k)[0] for k in range(3)])
    np.testing.assert_allclose(net.first, expected)


def test_evaluate_bad_paths_are_clear_errors(tmp_path):
    proc = run_script("evaluate.py", [f"checkpoint={tmp_path / 'missing'}"], cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_script("evaluate.py", [f"checkpoint={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 2 and "no checkpoint found" in proc.stderr


def test_checkpoint_of_another_network_is_refused(cartpole_run, tmp_path):
    run, _ = cartpole_run
    state = load_checkpoint(run / "checkpoints" / "final.pt")
    state["config"]["network"]["hidden_sizes"] = [32, 32]
    path = save_checkpoint(state, tmp_path / "checkpoints" / "final.pt")
    cfg = EvaluateConfig(checkpoint=str(path))
    cfg.logger.kind = "none"
    with pytest.raises(ConfigError, match="network does not match"):
        evaluate_checkpoint(cfg)
    assert not (tmp_path / "eval").exists()


def test_normalization_statistics_round_trip_and_are_frozen(tmp_path):
    cfg = compose_cfg(["env=pendulum", "logger=none", "progress=false", "total_timesteps=4096",
                       "agent.num_steps=512", "agent.num_minibatches=8", "eval_episodes=2"])
    train(cfg, tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints" / "final.pt")
    obs = state["normalization"]["obs"]
    assert obs["count"] > 4096 and not torch.allclose(obs["mean"], torch.zeros(3, dtype=obs["mean"].dtype))
    # Loaded frozen into a fresh env (as evaluation does), the statistics stay as saved.
    from ppo_lab.config import to_typed
    from ppo_lab.envs import load_normalization_state, make_vec_env, normalization_from_tensors, normalization_state

    envs = make_vec_env(to_typed(cfg).env, 2)
    saved = normalization_from_tensors(state["normalization"])
    load_normalization_state(envs, saved, freeze=True)
    envs.reset(seed=0)
    for _ in range(50):
        envs.step(envs.action_space.sample())
    after = normalization_state(envs)
    for key in ("obs", "reward"):
        assert after[key]["count"] == saved[key]["count"]
        assert (after[key]["mean"] == saved[key]["mean"]).all()
    envs.close()


def test_stochastic_evaluation_is_reproducible_from_its_seed():
    from ppo_lab.config import ActionType, to_typed
    from ppo_lab.training.evaluation import evaluate_policy
    from ppo_lab.policies import ActorCritic

    env_cfg = to_typed(compose_cfg(["logger=none"])).env
    obs_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    torch.manual_seed(0)
    net = ActorCritic(obs_space, gym.spaces.Discrete(2), ActionType.discrete)
    first = evaluate_policy(net.inference_policy(), env_cfg, 4, seed=7, deterministic=False)
    assert evaluate_policy(net.inference_policy(), env_cfg, 4, seed=7, deterministic=False) == first
    assert evaluate_policy(net.inference_policy(), env_cfg, 4, seed=8, deterministic=False) != first
