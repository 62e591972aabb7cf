"""Rollout collection under gymnasium's next-step autoreset."""

import gymnasium as gym
import numpy as np
import torch

from ppo_lab.training.rollout import RolloutCollector


class CountEnv(gym.Env):
    """obs = [steps taken]; reward 1; truncated by TimeLimit(3); terminated when action == 1 at step 2."""

    observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], np.float32), 1.0, bool(action == 1 and self.t == 2), False, {}


class FakeNet:
    """V(s) = 10 * s; always chooses action ``self.action``."""

    continuous = False

    def __init__(self, action):
        self.action = action

    def act(self, obs, rng):
        n = obs.shape[0]
        return np.full(n, self.action), np.zeros(n, np.float32), 10 * obs[:, 0]

    def value(self, obs):
        return 10 * obs[:, 0]

    def inference_policy(self):
        return self


def make_envs():
    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.TimeLimit(CountEnv(), 3)])
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def test_truncation_bootstrap_value_is_the_true_final_observation():
    collector = RolloutCollector(make_envs(), num_steps=6, seed=0)
    buf, _ = collector.collect(FakeNet(action=0))
    # obs per step: 0 1 2 | 3 (final obs, autoreset step) | 0 1
    np.testing.assert_array_equal(buf.obs[:, 0, 0], [0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(buf.truncated[:, 0], [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(buf.valid[:, 0], [1, 1, 1, 0, 1, 1])
    # The step that truncated (t=2) reached obs 3 -> bootstrap value 30, not V(reset obs) = 0.
    assert buf.next_values()[2, 0] == 30.0
    # The autoreset step's reward is 0 and it is excluded from training via valid.
    assert buf.rewards[3, 0] == 0.0


def test_termination_is_recorded_and_the_autoreset_step_carries_into_the_next_rollout():
    collector = RolloutCollector(make_envs(), num_steps=2, seed=0)
    buf, episodes = collector.collect(FakeNet(action=1))
    np.testing.assert_array_equal(buf.terminated[:, 0], [0, 1])
    np.testing.assert_array_equal(buf.valid[:, 0], [1, 1])
    assert episodes == [(2.0, 2)]
    assert buf.next_value[0] == 20.0  # V(final obs 2); ignored by GAE since the step terminated
    buf, _ = collector.collect(FakeNet(action=1))
    # The next rollout opens with the autoreset step (final obs 2, invalid), then obs 0.
    np.testing.assert_array_equal(buf.obs[:, 0, 0], [2, 0])
    np.testing.assert_array_equal(buf.valid[:, 0], [0, 1])


def test_each_rollout_acts_with_the_current_weights():
    """The collector takes a fresh fused snapshot per rollout: after a weight change the stored
    values are the new network's, not a cached copy's."""
    from ppo_lab.config import ActionType
    from ppo_lab.policies import ActorCritic

    envs = make_envs()
    net = ActorCritic(envs.single_observation_space, envs.single_action_space, ActionType.discrete)
    collector = RolloutCollector(envs, num_steps=5, seed=0)
    for shift in (0.0, 3.0):
        with torch.no_grad():
            net.value_head.bias.fill_(shift)
        buf, _ = collector.collect(net)
        with torch.no_grad():
            expected = net.value(torch.from_numpy(buf.obs.reshape(5, 1))).view(5, 1)
        np.testing.assert_allclose(buf.values, expected.numpy(), rtol=1e-5, atol=1e-5)
        assert abs(float(buf.values.mean()) - shift) < 2.0


def test_collector_checkpoints_its_action_sampler(tmp_path):
    """The generator the actions are drawn from is part of the collector's state and survives a
    checkpoint (``torch.load(weights_only=True)``), so a resumed run draws what the uninterrupted
    run would have drawn. Checkpoints written before it existed still load."""
    from ppo_lab.io.checkpoint import load_checkpoint, save_checkpoint

    collector = RolloutCollector(make_envs(), num_steps=2, seed=0)
    save_checkpoint({"model": {}, "config": {}, "collector": collector.state_dict()}, tmp_path / "c.pt")
    first = collector.rng.random(3)
    collector.load_state_dict(load_checkpoint(tmp_path / "c.pt")["collector"])
    np.testing.assert_array_equal(collector.rng.random(3), first)
    collector.reset(seed=1)
    assert not np.array_equal(collector.rng.random(3), first)
    old_format = {k: v for k, v in collector.state_dict().items() if k != "rng"}
    collector.load_state_dict(old_format)  # keeps its own generator
