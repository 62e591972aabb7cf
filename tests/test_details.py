"""The PPO implementation details (Huang et al. 2022, "The 37 Implementation Details of PPO")
that are not pinned elsewhere; ``docs/details.md`` maps every detail to its code and its test.

Each test names its detail: ``core N``, ``atari N``, ``continuous N``, ``multidiscrete``, ``aux``.
"""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical as TorchCategorical

import ppo_lab.training.population as population_mod
import ppo_lab.training.trainer as trainer_mod
from conftest import compose_cfg, run_script
from ppo_lab.config import ActionType, EnvConfig, to_typed
from ppo_lab.envs import make_vec_env
from ppo_lab.envs.normalization import NormalizeVector
from ppo_lab.io.sinks import Sinks
from ppo_lab.policies import ActorCritic, NatureCNN
from ppo_lab.training.rollout import RolloutCollector
from ppo_lab.commands.train import train
from ppo_lab.policies import build_network
from wandb_offline import offline_run


class Recorder:
    """A metric sink that keeps every logged row."""

    def __init__(self):
        self.rows = []

    def log(self, metrics, step):
        self.rows.append({"global_step": step, **metrics})

    def summary(self, values):
        pass

    def finish(self, exit_code=0):
        pass

    def series(self, key):
        return [r[key] for r in self.rows if key in r]


def make_trainer(overrides, tmp_path):
    cfg = to_typed(compose_cfg(["logger=none", "progress=false", "eval_episodes=1"] + overrides))
    envs = make_vec_env(cfg.env, cfg.agent.num_envs, cfg.agent.gamma)
    network = build_network(cfg, envs, torch.device("cpu"))
    recorder = Recorder()
    trainer = trainer_mod.Trainer(cfg, envs, network, Sinks({"recorder": recorder}), tmp_path,
                                  torch.device("cpu"), run_config={})
    return trainer, recorder


def solo(x):
    """A population-of-one tensor (leading member dim of 1) as the solo run's (a copy)."""
    return x.detach()[0].clone() if torch.is_tensor(x) and x.dim() > 0 else x


def spy_losses(monkeypatch):
    """Record the arguments of every ppo_losses call made by the trainer."""
    calls = []
    real = population_mod.ppo_losses

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"args": [solo(a) for a in args], "out": {k: solo(v) for k, v in out.items()}})
        return out

    monkeypatch.setattr(population_mod, "ppo_losses", spy)
    return calls


def test_core1_vectorized_env_rollout_shapes_and_global_step(tmp_path):
    trainer, rec = make_trainer(["agent.num_envs=3", "agent.num_steps=5", "agent.num_minibatches=3",
                                 "total_timesteps=45"], tmp_path)
    assert trainer.collector.buffer.obs.shape == (5, 3, 4)
    trainer.fit()
    assert rec.series("train/update") == [1, 2, 3]
    assert [r["global_step"] for r in rec.rows if "train/loss" in r] == [15, 30, 45]


def test_core3_adam_eps_is_1e5(tmp_path):
    trainer, _ = make_trainer(["total_timesteps=256"], tmp_path)
    assert trainer.optimizer.eps == 1e-5


def test_core4_learning_rate_anneals_linearly_to_zero(tmp_path):
    trainer, rec = make_trainer(["agent.learning_rate=0.004", "total_timesteps=1024"], tmp_path)
    trainer.fit()
    np.testing.assert_allclose(rec.series("train/learning_rate"), [0.004, 0.003, 0.002, 0.001])
    trainer, rec = make_trainer(["agent.anneal_lr=false", "total_timesteps=512"], tmp_path / "b")
    trainer.fit()
    assert rec.series("train/learning_rate") == [1e-3, 1e-3]


def test_core6_minibatches_cover_each_valid_sample_once_per_epoch(tmp_path, monkeypatch):
    calls = spy_losses(monkeypatch)
    trainer, _ = make_trainer(["agent.num_envs=4", "agent.num_steps=32", "agent.num_minibatches=4",
                               "agent.update_epochs=3", "total_timesteps=128"], tmp_path)
    trainer.fit()
    valid = int(trainer.collector.buffer.valid.sum())
    assert len(calls) == 3 * 4
    sizes = [c["args"][0].shape[-1] for c in calls]
    assert sum(sizes) == 3 * valid and max(sizes) - min(sizes) <= 1


def test_core7_advantages_reach_the_loss_raw_and_are_normalized_per_minibatch(tmp_path, monkeypatch):
    calls = spy_losses(monkeypatch)
    trainer, _ = make_trainer(["agent.num_minibatches=4", "agent.update_epochs=1", "total_timesteps=256"], tmp_path)
    trainer.fit()
    first = calls[0]["args"]
    adv, old_value, returns, norm_adv = first[2], first[4], first[5], first[9]
    assert norm_adv is True
    # Raw (unnormalized over the batch) advantages: the value target is advantages + values,
    # computed before any normalization (core 7 / core 9).
    torch.testing.assert_close(returns, adv + old_value)
    assert abs(float(adv.mean())) > 1e-3 or abs(float(adv.std()) - 1) > 1e-3


def test_core8_ratio_is_exactly_one_on_the_first_minibatch_of_the_first_epoch(tmp_path, monkeypatch):
    calls = spy_losses(monkeypatch)
    trainer, _ = make_trainer(["agent.num_minibatches=4", "total_timesteps=256"], tmp_path)
    trainer.fit()
    new_logprob, old_logprob = calls[0]["args"][0], calls[0]["args"][1]
    torch.testing.assert_close(new_logprob, old_logprob, rtol=0, atol=1e-6)
    assert calls[0]["out"]["clipfrac"] == 0 and abs(float(calls[0]["out"]["approx_kl"])) < 1e-7
    assert any(float(c["out"]["approx_kl"]) > 0 for c in calls[1:])


def test_core11_gradients_are_clipped_to_max_grad_norm(tmp_path, monkeypatch):
    norms = []
    real_step = population_mod.StackedAdam.step

    def step(self, active=None):
        norms.append(float(torch.linalg.vector_norm(self.flat_grad, dim=1).max()))
        real_step(self, active)

    monkeypatch.setattr(population_mod.StackedAdam, "step", step)
    trainer, rec = make_trainer(["agent.max_grad_norm=0.01", "total_timesteps=256"], tmp_path)
    trainer.fit()
    assert max(norms) <= 0.01 * (1 + 1e-4)
    assert rec.series("train/grad_norm")[0] > 0.01  # the logged norm is the one before clipping


def test_core12_debug_variables_are_logged_to_wandb_offline_under_train(tmp_path):
    proc = run_script("train.py", ["debug=fast", "logger=wandb", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = offline_run(tmp_path / "run")
    expected = {"train/approx_kl", "train/old_approx_kl", "train/clipfrac", "train/explained_variance",
                "train/entropy", "train/grad_norm", "train/learning_rate", "train/clip_coef",
                "train/policy_loss", "train/value_loss", "time/sps", "charts/episodic_return"}
    assert expected <= run["history_keys"]
    assert run["step_metrics"].get("*") == "global_step"


def test_atari1_2_noop_reset_and_max_and_skip_settings():
    envs = make_vec_env(to_typed(compose_cfg(["env=breakout"])).env, 1)
    env = envs.unwrapped.envs[0] if hasattr(envs.unwrapped, "envs") else envs.envs[0]
    while not isinstance(env, gym.wrappers.AtariPreprocessing):
        env = env.env
    assert env.noop_max == 30 and env.frame_skip == 4 and env.screen_size == (84, 84)
    assert env.unwrapped.spec.kwargs["frameskip"] == 1  # skipping done by the wrapper (max of 2 frames)
    envs.close()


def test_atari8_9_nature_cnn_layers_and_pixel_scaling():
    cnn = NatureCNN(4, (84, 84), 512)
    convs = [m for m in cnn.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)), (64, (3, 3), (1, 1))]
    assert cnn.fc[0].in_features == 3136 and cnn.fc[0].out_features == 512
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    expected = cnn.fc(cnn.convs(frames.float() / 255.0))
    torch.testing.assert_close(cnn(frames), expected)
    for conv in convs:  # orthogonal init with gain sqrt(2) (core 2, CNN layers too)
        w = conv.weight.detach().reshape(conv.out_channels, -1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, 2 * torch.eye(gram.shape[0]), atol=1e-4, rtol=1e-3)


def test_continuous4_mujoco_envs_use_separate_networks_and_the_mujoco_preset():
    for env in ("halfcheetah", "hopper", "walker2d", "ant"):
        cfg = to_typed(compose_cfg([f"env={env}"]))
        assert cfg.network.shared is False and cfg.action.type is ActionType.continuous
        assert (cfg.agent.num_envs, cfg.agent.num_steps, cfg.agent.minibatch_size, cfg.agent.update_epochs) == (1, 2048, 64, 10)


class RecordingBox(gym.Env):
    """Continuous env in [-1, 1] that records the actions it receives."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    received: list = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        RecordingBox.received.append(np.array(action))
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_continuous5_env_gets_clipped_actions_buffer_keeps_the_unclipped_sample():
    RecordingBox.received = []
    envs = gym.wrappers.vector.ClipAction(gym.vector.SyncVectorEnv([RecordingBox]))
    torch.manual_seed(0)
    net = ActorCritic(RecordingBox.observation_space, RecordingBox.action_space, ActionType.continuous,
                      log_std_init=1.5)  # std 4.5: most samples fall outside [-1, 1]
    buf, _ = RolloutCollector(envs, 64, seed=0).collect(net)
    stored = buf.actions[:, 0, 0]
    received = np.array(RecordingBox.received)[:, 0]
    assert np.abs(stored).max() > 1.0
    np.testing.assert_allclose(received, np.clip(stored, -1, 1), rtol=1e-6)
    # The stored log-prob is that of the unclipped sample.
    with torch.no_grad():
        logp, _, _ = net.evaluate_actions(torch.from_numpy(buf.obs[:, 0]), torch.from_numpy(buf.actions[:, 0]))
    np.testing.assert_allclose(buf.logprobs[:, 0], logp.numpy(), rtol=1e-5, atol=1e-5)


def test_continuous5_batched_clip_equals_gymnasiums_clip_action():
    """``clip_actions`` (one np.clip over the batch) gives what ``vw.ClipAction`` (one clip per env)
    gives: the same float32 actions reach each env, and the same unbounded spaces."""
    from ppo_lab.envs.factory import clip_actions

    class Box3(RecordingBox):
        action_space = gym.spaces.Box(np.array([-1.0, -2.0, 0.0], np.float32), np.array([1.0, 0.5, 3.0], np.float32))

    actions = np.random.default_rng(0).normal(0, 3, size=(50, 2, 3)).astype(np.float32)
    received = []
    for wrap in (gym.wrappers.vector.ClipAction, clip_actions):
        RecordingBox.received = []
        envs = wrap(gym.vector.SyncVectorEnv([Box3, Box3]))
        envs.reset(seed=0)
        for a in actions:
            envs.step(a)
        received.append(np.array(RecordingBox.received))
        spaces = (envs.single_action_space, envs.action_space)
        if wrap is clip_actions:
            assert spaces == reference_spaces
        reference_spaces = spaces
    assert received[0].dtype == received[1].dtype == np.float32
    np.testing.assert_array_equal(received[0], received[1])
    assert (received[1] != actions.reshape(100, 3)).any()  # the clip did clip


def test_continuous2_log_std_is_kept_inside_its_clamp_by_the_optimizer(tmp_path):
    trainer, rec = make_trainer(["env=pendulum", "action.log_std_init=1.99", "agent.ent_coef=1.0",
                                 "agent.learning_rate=0.5", "agent.anneal_lr=false", "agent.num_steps=64",
                                 "agent.num_minibatches=1", "agent.update_epochs=4", "total_timesteps=256"],
                                tmp_path)
    trainer.fit()
    # The entropy bonus pushes log_std up by ~lr per step; without the in-place clamp it would
    # leave [-20, 2], where the forward clamp has no gradient and it would stay stuck.
    assert float(trainer.network.log_std.detach().max()) == 2.0


def test_continuous6_9_observation_and_reward_normalization_and_clipping():
    cfg = EnvConfig(id="Pendulum-v1", normalize_obs=True, normalize_reward=True, clip_obs=0.5, clip_reward=0.2)
    envs = make_vec_env(cfg, 2, gamma=0.9)
    envs.reset(seed=0)
    obs_seen, rewards = [], []
    for _ in range(300):
        obs, reward, *_ = envs.step(envs.action_space.sample())
        obs_seen.append(obs)
        rewards.append(reward)
    obs_seen, rewards = np.array(obs_seen), np.array(rewards)
    assert np.abs(obs_seen).max() <= 0.5 + 1e-6 and np.isclose(np.abs(obs_seen).max(), 0.5)  # clipped
    assert np.abs(rewards).max() <= 0.2 + 1e-6 and np.isclose(np.abs(rewards).max(), 0.2)
    norm = NormalizeVector
    env = envs
    while not isinstance(env, norm):
        env = env.env
    assert env.gamma == 0.9  # scaled by the std of the return discounted with the agent's gamma
    envs.close()


class TwoKnobs(gym.Env):
    """MultiDiscrete([3, 2]): reward 1 when the first knob is 2 and the second is 0."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), float(action[0] == 2 and action[1] == 0), False, self.t >= 10, {}


def test_multidiscrete_log_probs_are_summed_over_components_and_ppo_learns():
    space = TwoKnobs.action_space
    net = ActorCritic(TwoKnobs.observation_space, space, ActionType.discrete)
    logits, _ = net(torch.randn(5, 2))
    actions = torch.tensor([[0, 1], [2, 0], [1, 1], [2, 1], [0, 0]])
    logp, ent = net.dist.log_prob_entropy(logits, actions)
    parts = torch.split(logits, [3, 2], dim=-1)
    ref_logp = sum(TorchCategorical(logits=p).log_prob(actions[:, i]) for i, p in enumerate(parts))
    ref_ent = sum(TorchCategorical(logits=p).entropy() for p in parts)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(ent, ref_ent)
    np_logp = net.dist.log_prob(logits.detach().numpy(), actions.numpy())  # the acting (numpy) path
    np.testing.assert_allclose(np_logp, ref_logp.detach().numpy(), rtol=1e-5, atol=1e-6)
    gym.register("TwoKnobs-v0", entry_point=TwoKnobs, max_episode_steps=10)
    try:
        cfg = compose_cfg(["env.id=TwoKnobs-v0", "env.vectorization=sync", "logger=none", "progress=false",
                           "total_timesteps=8192", "eval_episodes=2", "agent.ent_coef=0.01"])
        result = train(cfg, __import__("tempfile").mkdtemp())
    finally:
        gym.registry.pop("TwoKnobs-v0")
    assert result["eval/episodic_return"] == 10.0  # always (2, 0) after training


def test_aux_clip_coef_anneals_and_target_kl_stops_epochs_early(tmp_path):
    trainer, rec = make_trainer(["agent.anneal_clip=true", "agent.clip_coef=0.2", "total_timesteps=1024",
                                 "agent.target_kl=1e-7"], tmp_path)
    trainer.fit()
    np.testing.assert_allclose(rec.series("train/clip_coef"), [0.2, 0.15, 0.1, 0.05])
    # One minibatch per epoch: epoch 1 is measured before its own step (ratio 1 and KL 0 up to
    # float rounding: the rollout's log-probs come from the fused snapshot, ~1e-9); epoch 2's KL
    # exceeds the target, so every update stops after 2 of its 20 epochs.
    assert rec.series("train/epochs") == [2, 2, 2, 2]
    trainer, rec = make_trainer(["total_timesteps=512"], tmp_path / "b")
    trainer.fit()
    assert rec.series("train/epochs") == [20, 20]


def test_aux_kl_penalty_adapts_beta_in_a_short_run(tmp_path):
    """CI's short KL-penalty run; the learning target is the slow test below."""
    result = train(compose_cfg(["agent.loss=kl_penalty", "total_timesteps=10240", "logger=none",
                                "progress=false", "seed=1", "eval_episodes=2"]), tmp_path)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    betas = [r["train/kl_beta"] for r in rows if "train/kl_beta" in r]
    assert len(betas) == 40 and len(set(betas)) > 1 and result["global_step"] == 10240


@pytest.mark.slow
def test_aux_kl_penalty_solves_cartpole_within_150k_steps(tmp_path):
    result = train(compose_cfg(["agent.loss=kl_penalty", "total_timesteps=150000", "logger=none",
                                "progress=false", "seed=1"]), tmp_path)
    assert result["eval/episodic_return"] >= 475
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    betas = [r["train/kl_beta"] for r in rows if "train/kl_beta" in r]
    assert len(set(betas)) > 1  # beta adapted


def test_kl_penalty_and_clip_objectives_differ_on_the_same_batch():
    from ppo_lab.algo.losses import ppo_losses

    args = (torch.tensor([0.5, -0.5]), torch.zeros(2), torch.tensor([1.0, -1.0]), torch.zeros(2),
            torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.2, True, False)
    clip = ppo_losses(*args)["policy_loss"]
    kl = ppo_losses(*args, kl_beta=1.0)["policy_loss"]
    ratio = torch.exp(torch.tensor([0.5, -0.5]))
    expected_kl = -(torch.tensor([1.0, -1.0]) * ratio).mean() + ((ratio - 1) - torch.tensor([0.5, -0.5])).mean()
    assert math.isclose(float(kl), float(expected_kl), rel_tol=1e-6)
    assert not math.isclose(float(clip), float(kl))


def test_smoothed_return_is_the_mean_of_the_last_20_episodes_and_elapsed_time_grows(tmp_path, monkeypatch):
    from ppo_lab.training.trainer import Trainer

    seen, per_update = [], []
    real_advantages = Trainer.advantages

    def advantages(self, collected, lr, clip_coef):  # phase 3 receives each rollout's episodes
        seen.extend(r for r, _ in collected[1])
        per_update.append(list(seen))
        return real_advantages(self, collected, lr, clip_coef)

    monkeypatch.setattr(Trainer, "advantages", advantages)
    trainer, rec = make_trainer(["total_timesteps=4096"], tmp_path)  # 16 updates of 256 steps
    trainer.fit()
    rows = [r for r in rec.rows if "train/update" in r]
    assert len(rows) == len(per_update) == 16 and len(seen) > 20
    for row, returns in zip(rows, per_update):
        if returns:
            assert math.isclose(row["charts/episodic_return_last20"], float(np.mean(returns[-20:])), rel_tol=1e-6)
        else:
            assert "charts/episodic_return_last20" not in row
    elapsed = [r["time/elapsed_s"] for r in rows]
    assert elapsed[0] > 0 and all(b > a for a, b in zip(elapsed, elapsed[1:]))


class ByteSignal(gym.Env):
    """uint8 features (not an image): reward 1 when the action names which half the byte is in."""

    observation_space = gym.spaces.Box(0, 255, (2,), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def _draw(self):
        self.byte = int(self.np_random.integers(0, 256))
        return np.array([self.byte, 255 - self.byte], np.uint8)

    def step(self, action):
        self.t += 1
        reward = float(int(action) == int(self.byte >= 128))
        return self._draw(), reward, False, self.t >= 20, {}


def test_an_mlp_trains_on_uint8_feature_observations(tmp_path):
    gym.register("ByteSignal-v0", entry_point=ByteSignal)
    try:
        cfg = compose_cfg(["env.id=ByteSignal-v0", "env.vectorization=sync",
                           "logger=none", "progress=false", "total_timesteps=8192", "eval_episodes=2"])
        result = train(cfg, tmp_path)
    finally:
        gym.registry.pop("ByteSignal-v0")
    assert result["eval/episodic_return"] >= 18  # of 20: it reads the byte
