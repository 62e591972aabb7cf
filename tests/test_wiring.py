"""Every config key reaches its use: wiring tests.

Each test changes one key and observes its effect where the key is used (one update on a fixed
batch, one env step, one evaluation with given statistics), so a mutant that drops the key on the
way (the Trainer passing a constant, the factory leaving out a wrapper, evaluation not loading
the statistics) fails here, not only in the slow learning tests.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import vector as vw

import ppo_lab.commands.train as train_mod
import ppo_lab.training.population as population_mod
import ppo_lab.training.trainer as trainer_mod
from conftest import compose_cfg
from test_details import make_trainer as details_make_trainer
from test_details import solo
from test_envs import FakeAtariGame
from ppo_lab.algo.advantages import compute_gae
from ppo_lab.algo.schedules import linear_anneal
from ppo_lab.config import EnvConfig, to_typed
from ppo_lab.envs import make_vec_env, wrap_atari_game
from ppo_lab.envs.atari import EpisodicLife
from ppo_lab.envs.normalization import NormalizeVector
from ppo_lab.training.evaluation import evaluate_policy

#: A tiny CartPole budget: 2 envs x 16 steps, 2 minibatches, 2 epochs, 2 updates.
SMALL = ["agent.num_envs=2", "agent.num_steps=16", "agent.num_minibatches=2", "agent.update_epochs=2",
         "total_timesteps=64", "checkpoint_interval=1000"]


def make_trainer(overrides, tmp_path, seed=0):
    """``test_details.make_trainer`` with torch's global RNG seeded first, so two configs get the
    same initial network."""
    torch.manual_seed(seed)
    return details_make_trainer(overrides, tmp_path)


def collected(overrides, tmp_path):
    """A trainer, one collected rollout and its GAE advantages/returns."""
    trainer, recorder = make_trainer(SMALL + overrides, tmp_path)
    a = trainer.cfg.agent
    buf, _ = trainer.collector.collect(trainer.network)
    advantages, returns = compute_gae(buf.rewards, buf.values, buf.next_values(), buf.terminated,
                                      buf.truncated, a.gamma, a.gae_lambda)
    return trainer, buf, advantages, returns


def one_update(overrides, tmp_path, clip_coef=0.2):
    """``Trainer._update`` once on a collected rollout, with the minibatch order seeded."""
    trainer, buf, advantages, returns = collected(overrides, tmp_path)
    obs = buf.obs.copy()
    torch.manual_seed(123)
    stats = trainer._update(buf, advantages, returns, clip_coef)
    trainer.envs.close()
    return trainer, obs, stats


def spy_losses(monkeypatch, trainer_ref=None):
    """Record the arguments and results of every ppo_losses call the trainer makes."""
    calls = []
    real = population_mod.ppo_losses

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"args": [solo(x) for x in args],
                      "out": {k: solo(v) for k, v in out.items()},
                      "iteration": trainer_ref[0].iteration if trainer_ref else None})
        return out

    monkeypatch.setattr(population_mod, "ppo_losses", spy)
    return calls


def params_of(network):
    return torch.cat([p.detach().reshape(-1).clone() for p in network.parameters()])


# --------------------------------------------------------------------- agent keys in the update
def test_clip_vloss_reaches_the_value_loss(tmp_path, monkeypatch):
    """agent.clip_vloss: catches the Trainer ignoring it (passing a constant to ppo_losses)."""
    calls = spy_losses(monkeypatch)
    # A tiny clip range, so the value moves beyond it after the first minibatch step.
    results = {}
    for flag in (True, False):
        calls.clear()
        trainer, obs, stats = one_update([f"agent.clip_vloss={str(flag).lower()}", "agent.clip_coef=0.001"],
                                         tmp_path / str(flag), clip_coef=0.001)
        assert all(c["args"][8] is flag for c in calls)  # the key is what the loss is told
        # Recompute each minibatch's value loss from the tensors the loss saw.
        for c in calls:
            new_v, old_v, ret = c["args"][3], c["args"][4], c["args"][5]
            unclipped = 0.5 * ((new_v - ret) ** 2).mean()
            clipped = 0.5 * torch.max((new_v - ret) ** 2,
                                      (old_v + torch.clamp(new_v - old_v, -0.001, 0.001) - ret) ** 2).mean()
            torch.testing.assert_close(c["out"]["value_loss"], clipped if flag else unclipped)
        results[flag] = (obs, stats, params_of(trainer.network))
    np.testing.assert_array_equal(results[True][0], results[False][0])  # the same batch
    assert results[True][1]["value_loss"] != results[False][1]["value_loss"]
    assert not torch.equal(results[True][2], results[False][2])  # and a different update


def test_annealed_clip_coef_reaches_ppo_losses(tmp_path, monkeypatch):
    """agent.anneal_clip: catches the Trainer handing ppo_losses the constant clip_coef instead
    of linear_anneal(clip_coef, iteration, num_iterations)."""
    ref = [None]
    calls = spy_losses(monkeypatch, ref)
    trainer, rec = make_trainer(SMALL[:-2] + ["total_timesteps=96", "agent.clip_coef=0.3",
                                              "agent.anneal_clip=true"], tmp_path)
    ref[0] = trainer
    trainer.fit()
    assert trainer.num_iterations == 3
    assert len(calls) == 3 * 2 * 2
    for c in calls:
        assert c["args"][7] == pytest.approx(linear_anneal(0.3, c["iteration"], 3))
    np.testing.assert_allclose(rec.series("train/clip_coef"), [linear_anneal(0.3, i, 3) for i in (1, 2, 3)])
    assert len({c["args"][7] for c in calls}) == 3

    calls.clear()
    trainer, rec = make_trainer(SMALL[:-2] + ["total_timesteps=96", "agent.clip_coef=0.3",
                                              "agent.anneal_clip=false"], tmp_path / "const")
    ref[0] = trainer
    trainer.fit()
    assert calls and all(c["args"][7] == 0.3 for c in calls)


def test_vf_coef_scales_the_value_term_of_the_loss(tmp_path):
    """agent.vf_coef: catches the Trainer ignoring it (total loss / gradient norm unchanged)."""
    results = {}
    for vf in (0.5, 3.0):
        _, obs, stats = one_update(["agent.num_minibatches=1", "agent.update_epochs=1", "agent.ent_coef=0.01",
                                    f"agent.vf_coef={vf}"], tmp_path / str(vf))
        # One minibatch: the logged terms are that minibatch's; the loss combines them with vf_coef.
        assert stats["value_loss"] > 0
        assert stats["loss"] == pytest.approx(
            stats["policy_loss"] - 0.01 * stats["entropy"] + vf * stats["value_loss"], rel=1e-5, abs=1e-6)
        results[vf] = (obs, stats)
    np.testing.assert_array_equal(results[0.5][0], results[3.0][0])
    assert results[0.5][1]["value_loss"] == pytest.approx(results[3.0][1]["value_loss"])  # same batch
    assert results[3.0][1]["loss"] > results[0.5][1]["loss"]
    assert results[3.0][1]["grad_norm"] != pytest.approx(results[0.5][1]["grad_norm"])


def test_minibatches_are_shuffled_every_epoch_and_the_trainer_uses_them(tmp_path, monkeypatch):
    """TrainingBatch.minibatch_indices: catches the minibatches not being shuffled (same order each epoch)."""
    trainer, buf, advantages, returns = collected([], tmp_path)
    batch = buf.training_batch(advantages, returns, torch.device("cpu"))
    torch.manual_seed(5)
    epochs = [torch.cat([batch.logprobs[rows] for rows in batch.minibatch_indices(2)]) for _ in range(2)]
    in_buffer = batch.logprobs[batch.valid]
    for order in epochs:  # each valid sample once
        torch.testing.assert_close(torch.sort(order).values, torch.sort(in_buffer).values)
    assert not torch.equal(epochs[0], epochs[1])
    assert not torch.equal(epochs[0], in_buffer)

    # The update iterates those shuffled minibatches: one minibatch per epoch, two epochs.
    calls = spy_losses(monkeypatch)
    trainer.cfg.agent.num_minibatches = 1
    torch.manual_seed(7)
    trainer._update(buf, advantages, returns, 0.2)
    trainer.envs.close()
    old_logprobs = [c["args"][1] for c in calls]
    assert len(old_logprobs) == 2
    torch.testing.assert_close(torch.sort(old_logprobs[0]).values, torch.sort(in_buffer).values)
    assert not torch.equal(old_logprobs[0], old_logprobs[1])
    assert not torch.equal(old_logprobs[0], in_buffer)


def controlled_kl(monkeypatch, values):
    """ppo_losses as usual, but the n-th call reports approx_kl = values[n]."""
    real = population_mod.ppo_losses
    count = [0]

    def fake(*args, **kwargs):
        out = real(*args, **kwargs)
        out["approx_kl"] = torch.full_like(out["approx_kl"], values[count[0]])
        count[0] += 1
        return out

    monkeypatch.setattr(population_mod, "ppo_losses", fake)
    return count


@pytest.mark.parametrize("kls, expected_epochs", [
    # first minibatch above target, epoch mean below: go on; epoch 2's mean is above: stop.
    ([0.09, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0], 2),
    # first minibatch below target, epoch mean above: stop after epoch 1.
    ([0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 1),
    # never above: all epochs.
    ([0.01] * 8, 4),
])
def test_target_kl_compares_the_epoch_mean(tmp_path, monkeypatch, kls, expected_epochs):
    """agent.target_kl: catches the early stop comparing the first minibatch's approx_kl
    instead of the epoch mean (train/epochs)."""
    count = controlled_kl(monkeypatch, kls)
    _, _, stats = one_update(["agent.update_epochs=4", "agent.target_kl=0.05"], tmp_path)
    assert stats["epochs"] == expected_epochs
    assert count[0] == 2 * expected_epochs


# --------------------------------------------------------------------- env keys
def find_vector_wrapper(envs, kind):
    env = envs
    while isinstance(env, gym.vector.VectorWrapper):
        if isinstance(env, kind):
            return env
        env = env.env
    return None


def test_gamma_reaches_reward_normalization_through_the_training_wiring(tmp_path, monkeypatch):
    """agent.gamma with env.normalize_reward=true: catches train() building the env without
    agent.gamma (NormalizeReward keeping its default 0.99)."""
    built, seen = [], []
    real_make = train_mod.make_vec_env

    def capture(*args, **kwargs):
        envs = real_make(*args, **kwargs)
        built.append(envs)
        return envs

    class FakeTrainer:
        def __init__(self, cfg, envs, network, sinks, *args, **kwargs):
            self.envs, self.sinks = envs, sinks
            seen.append(envs)

        def fit(self):
            return {}

    monkeypatch.setattr(train_mod, "make_vec_env", capture)
    monkeypatch.setattr(train_mod, "Trainer", FakeTrainer)
    cfg = compose_cfg(["env=pendulum", "logger=none", "progress=false", "agent.num_envs=2",
                       "agent.num_steps=32", "agent.num_minibatches=2", "agent.gamma=0.95",
                       "total_timesteps=64"])
    train_mod.train(cfg, tmp_path)
    assert len(built) == 1 and seen == built  # the env the Trainer trains on
    wrapper = find_vector_wrapper(seen[0], NormalizeVector)
    assert wrapper is not None
    assert wrapper.gamma == pytest.approx(0.95)


class ActionSpy(gym.Wrapper):
    """Per-env wrapper (env.wrappers) that records the actions reaching the sub-env."""

    def __init__(self, env):
        super().__init__(env)
        self.seen = []

    def step(self, action):
        self.seen.append(np.array(action, copy=True))
        return self.env.step(action)


def test_continuous_actions_are_clipped_before_reaching_the_env(tmp_path):
    """Actions clipped for Box actions: catches make_vec_env losing the vector-level clip."""
    cfg = to_typed(compose_cfg(["env=pendulum", "logger=none", "env.wrappers=[test_wiring.ActionSpy]"]))
    envs = make_vec_env(cfg.env, 2, cfg.agent.gamma)
    try:
        # The policy sees the unbounded space gymnasium's ClipAction gives.
        assert np.isinf(envs.single_action_space.high).all() and np.isinf(envs.action_space.low).all()
        envs.reset(seed=0)
        envs.step(np.array([[100.0], [-100.0]], dtype=np.float32))
        spies = []
        for sub in envs.unwrapped.envs:
            while not hasattr(sub, "seen"):
                sub = sub.env
            spies.append(sub)
        high = float(envs.unwrapped.single_action_space.high[0])  # 2.0, the sub-env's bound
        np.testing.assert_allclose(spies[0].seen[0], [high])
        np.testing.assert_allclose(spies[1].seen[0], [-high])
    finally:
        envs.close()


def wrapper_types(env):
    kinds = []
    while isinstance(env, gym.Wrapper):
        kinds.append(type(env))
        env = env.env
    return kinds


@pytest.mark.parametrize("episodic_life", [True, False])
def test_episodic_life_key_adds_or_leaves_out_the_wrapper(episodic_life):
    """env.episodic_life: catches wrap_atari_game ignoring episodic_life=false (EpisodicLife kept)."""
    env = wrap_atari_game(FakeAtariGame(), EnvConfig(family="atari", episodic_life=episodic_life))
    assert (EpisodicLife in wrapper_types(env)) is episodic_life
    env.reset(seed=0)
    terminated = [env.step(0)[2] for _ in range(4)]  # the 4th step loses a life
    assert terminated == [False, False, False, episodic_life]


def test_truncation_reaches_gae_separately_from_termination(tmp_path, monkeypatch):
    """env.max_episode_steps truncations: catches the Trainer folding truncated into terminated
    at its compute_gae call."""
    seen = []
    real = trainer_mod.compute_gae

    def spy(rewards, values, next_values, terminated, truncated, *args, **kwargs):
        seen.append((terminated.copy(), truncated.copy()))
        return real(rewards, values, next_values, terminated, truncated, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "compute_gae", spy)
    trainer, _ = make_trainer(["agent.num_envs=2", "agent.num_steps=32", "agent.num_minibatches=2",
                               "agent.update_epochs=1", "total_timesteps=64", "env.max_episode_steps=15"],
                              tmp_path)
    trainer.fit()
    trainer.envs.close()
    buf = trainer.collector.buffer
    assert len(seen) == 1
    assert buf.truncated.any() and buf.terminated.any()
    np.testing.assert_array_equal(seen[0][0], buf.terminated)
    np.testing.assert_array_equal(seen[0][1], buf.truncated)


# --------------------------------------------------------------------- evaluation
class ObsRecorder:
    """A fake policy: records every observation it acts on; zero torque."""

    def __init__(self):
        self.seen = []

    def act(self, obs, rng, deterministic):
        self.seen.append(obs.copy())
        return np.zeros((obs.shape[0], 1), dtype=np.float32), None, None


def test_evaluation_loads_and_freezes_the_given_normalization(tmp_path):
    """evaluate_policy normalization: catches evaluation not loading, or not freezing, the saved
    statistics (the policy must see (obs - mean) / sqrt(var + eps), clipped, throughout)."""
    env_cfg = to_typed(compose_cfg(["env=pendulum", "logger=none", "env.max_episode_steps=20"])).env
    mean = np.array([0.5, -0.2, 0.3])
    var = np.array([4.0, 0.25, 0.01])  # thetadot / 0.1: clipped at clip_obs
    stats = {"obs": {"mean": mean.copy(), "var": var.copy(), "count": 100.0},
             "reward": {"mean": np.zeros(()), "var": np.array(2.0), "count": 100.0}}
    policy = ObsRecorder()
    results = evaluate_policy(policy, env_cfg, 1, seed=3, deterministic=True, normalization=stats)
    assert results[0][1] == 20

    raw_env = gym.make("Pendulum-v1", max_episode_steps=20)
    raw = [raw_env.reset(seed=3)[0]]
    for _ in range(19):
        raw.append(raw_env.step(np.zeros(1, dtype=np.float32))[0])
    expected = np.clip((np.array(raw) - mean) / np.sqrt(var + 1e-8), -env_cfg.clip_obs, env_cfg.clip_obs)
    got = np.concatenate(policy.seen)
    assert got.shape == expected.shape
    assert (np.abs(expected) == env_cfg.clip_obs).any()  # the clip is exercised
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats["obs"]["mean"], mean)  # the caller's statistics untouched


def test_trainer_evaluation_is_handed_the_training_normalization(tmp_path, monkeypatch):
    """Trainer.evaluate: catches the Trainer not handing its normalization statistics to
    evaluate_policy (eval with fresh statistics)."""
    seen = []
    real = trainer_mod.evaluate_policy

    def spy(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("normalization"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "evaluate_policy", spy)
    trainer, _ = make_trainer(["env=pendulum", "agent.num_envs=1", "agent.num_steps=32", "agent.num_minibatches=1",
                               "total_timesteps=32", "env.max_episode_steps=10"], tmp_path)
    trainer.collector.collect(trainer.network)  # moves the running statistics off their initial values
    trainer.evaluate()
    trainer.envs.close()
    train_stats = trainer.normalization.numpy()
    assert len(seen) == 1 and seen[0] is not None
    assert set(seen[0]) == {"obs", "reward"}
    for key in ("obs", "reward"):
        assert train_stats[key]["count"] > 1
        np.testing.assert_array_equal(seen[0][key]["mean"], train_stats[key]["mean"])
        np.testing.assert_array_equal(seen[0][key]["var"], train_stats[key]["var"])
