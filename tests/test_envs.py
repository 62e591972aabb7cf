"""Env families and wrappers: Atari stack, normalization, errors naming what to install or choose."""

import gymnasium as gym
import numpy as np
import pytest

from conftest import compose_cfg, run_script
from ppo_lab.config import ConfigError, EnvConfig, to_typed
from ppo_lab.envs import check_env, make_vec_env, sign_reward, wrap_atari_game


class FakeALE:
    def __init__(self):
        self.lives_left = 3

    def lives(self):
        return self.lives_left


class FakeAtariGame(gym.Env):
    """84x84 frames; raw reward 5 per step; a life is lost every 4 steps; 3 lives.
    Records the actions it receives and how often the game was really reset."""

    observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def __init__(self, meanings=("NOOP", "RIGHT", "LEFT", "DOWN")):
        self.ale = FakeALE()
        self.meanings = list(meanings)
        self.actions, self.game_resets, self.t = [], 0, 0

    def get_action_meanings(self):
        return self.meanings

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ale.lives_left, self.t = 3, 0
        self.game_resets += 1
        return np.full((84, 84), self.t, np.uint8), {}

    def step(self, action):
        self.actions.append(int(action))
        self.t += 1
        if self.t % 4 == 0:
            self.ale.lives_left -= 1
        return np.full((84, 84), self.t, np.uint8), 5.0, self.ale.lives_left == 0, False, {}


def test_episodic_life_terminates_per_life_but_episode_return_covers_the_whole_game():
    game = FakeAtariGame()
    env = wrap_atari_game(game, EnvConfig(family="atari"))
    env.reset(seed=0)
    lives_lost, rewards, episode = 0, [], None
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(0)
        rewards.append(reward)
        if "episode" in info:
            episode = info["episode"]
            assert terminated
            break
        if terminated:  # a life lost: the value target stops here, the game goes on
            lives_lost += 1
            env.reset()
    assert lives_lost == 2
    assert game.game_resets == 1  # resets after a life loss did not restart the game
    # Training rewards are clipped to sign (+1); the logged return is the raw score 12 x 5.
    assert set(rewards) == {1.0} and len(rewards) == 10
    # The game lasted 12 frames-steps: 10 agent steps + the no-op step of each of the 2 life resets.
    assert episode["r"] == 60.0 and episode["l"] == 12


def test_frame_stack_shape_and_dtype():
    env = wrap_atari_game(FakeAtariGame(), EnvConfig(family="atari"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    obs, *_ = env.step(0)
    # Newest frame last; the stack shifts by one per step.
    assert [int(f[0, 0]) for f in obs] == [0, 0, 0, 1]


def test_fire_reset_presses_fire_in_games_that_need_it():
    game = FakeAtariGame(meanings=("NOOP", "FIRE", "RIGHT", "LEFT"))
    env = wrap_atari_game(game, EnvConfig(family="atari"))
    env.reset(seed=0)
    assert game.actions == [1, 2]
    no_fire = FakeAtariGame()
    wrap_atari_game(no_fire, EnvConfig(family="atari")).reset(seed=0)
    assert no_fire.actions == []


def test_sign_reward():
    assert [sign_reward(r) for r in (-7.0, 0.0, 0.5, 4.0)] == [-1.0, 0.0, 1.0, 1.0]


def test_real_breakout_vector_env_gives_uint8_stacks():
    envs = make_vec_env(to_typed(compose_cfg(["env=breakout"])).env, 2)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    envs.close()


@pytest.mark.parametrize("env", ["acrobot", "lunarlander_continuous", "halfcheetah", "hopper",
                                 "walker2d", "ant", "breakout", "pong"])
def test_each_family_runs_a_short_training(tmp_path, env):
    from ppo_lab.commands.train import train

    cfg = compose_cfg([f"env={env}", "logger=none", "progress=false", "agent.num_envs=2",
                       "agent.num_steps=32", "agent.num_minibatches=2", "agent.update_epochs=1",
                       "total_timesteps=128", "eval_episodes=1", "env.max_episode_steps=200"])
    result = train(cfg, tmp_path)
    assert np.isfinite(result["eval/episodic_return"])
    assert (tmp_path / "checkpoints" / "final.pt").is_file()


def test_unknown_env_id_names_close_ids():
    with pytest.raises(ConfigError, match="env.id='CartPole-v9' is not a registered gymnasium id.*CartPole-v1"):
        check_env(EnvConfig(id="CartPole-v9"))


def test_missing_family_dependency_names_the_extra(monkeypatch):
    def missing(*args, **kwargs):
        raise gym.error.DependencyNotInstalled("Box2D is not installed")

    monkeypatch.setattr(gym, "make", missing)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[box2d\]"'):
        check_env(EnvConfig(id="LunarLander-v3", family="box2d"))


def test_cnn_on_vector_observations_is_refused_before_training(tmp_path):
    proc = run_script("train.py", ["network=cnn_shared", "logger=none"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "network.kind=cnn needs image observations" in proc.stderr
    assert "allowed: network=mlp_shared or network=mlp_separate" in proc.stderr


@pytest.mark.parametrize("overrides", [
    ["env.id=MountainCar-v0"],  # from the CartPole config, whose vectorization is vector_entry_point
    ["env=halfcheetah", "env.normalize_obs=false", "env.max_episode_steps=100"],  # float64 obs
])
def test_any_id_and_unnormalized_float64_observations_train(tmp_path, overrides):
    from ppo_lab.commands.train import train

    result = train(compose_cfg(overrides + ["debug=fast", "total_timesteps=256", "eval_episodes=1"]), tmp_path)
    assert np.isfinite(result["eval/episodic_return"])
