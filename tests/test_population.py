"""The population trainer: member k of a population computes what its solo run computes; per-member
hyperparameters, early stop and divergence; the stacked forward equals the module's."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_lab.training.population as population_mod
from conftest import compose_cfg
from test_details import Recorder
from ppo_lab.config import ActionType, to_typed
from ppo_lab.envs import make_vec_env
from ppo_lab.io.sinks import Sinks
from ppo_lab.policies import build_network
from ppo_lab.policies.actor_critic import ActorCritic
from ppo_lab.policies.inference import StackedMLPPolicy
from ppo_lab.policies.stacked import StackedActorCritic, architecture_difference, stack_refusal
from ppo_lab.training.population import Population
from ppo_lab.training.runtime import seed_everything
from ppo_lab.training.trainer import Trainer, TrainingDiverged

#: CartPole, 4 envs x 32 steps, 4 minibatches (uneven valid counts between members: padding), 3 epochs.
SMALL = ["agent.num_envs=4", "agent.num_steps=32", "agent.num_minibatches=4", "agent.update_epochs=3",
         "total_timesteps=256", "checkpoint_interval=1000", "eval_episodes=1"]


def member(overrides, tmp_path, name):
    """A trainer built as ``prepare_run`` builds one: seeded, then env and network."""
    cfg = to_typed(compose_cfg(["logger=none", "progress=false"] + SMALL + overrides))
    seed_everything(cfg.seed, 1, False)
    envs = make_vec_env(cfg.env, cfg.agent.num_envs, cfg.agent.gamma)
    network = build_network(cfg, envs, torch.device("cpu"))
    recorder = Recorder()
    trainer = Trainer(cfg, envs, network, Sinks({"recorder": recorder}), tmp_path / name, torch.device("cpu"),
                      run_config={})
    return trainer, recorder


def first_update(trainers):
    """One round (rollout + GAE per member, then the population's update); the members' stats."""
    population = Population(trainers)
    rollouts = population.collect(range(len(trainers)))
    return population.update(rollouts)


def flat_params(trainer):
    return torch.cat([p.detach().reshape(-1) for p in trainer.network.parameters()]).clone()


CONFIGS = [
    ["seed=1"],
    ["seed=2", "agent.clip_coef=0.1", "agent.learning_rate=0.001"],
    ["seed=3", "agent.ent_coef=0.05", "agent.vf_coef=1.0", "agent.max_grad_norm=0.1"],
]


@pytest.mark.parametrize("extra", [[], ["env=pendulum"], ["network=mlp_shared"]], ids=["cartpole", "pendulum", "shared"])
def test_member_k_equals_its_solo_run_over_the_first_update(tmp_path, extra):
    solo = []
    for k, overrides in enumerate(CONFIGS):
        trainer, _ = member(extra + overrides, tmp_path, f"solo{k}")
        stats = first_update([trainer])[0]
        solo.append((flat_params(trainer), stats, trainer.optimizer.step_count, trainer.generator.get_state()))
        trainer.envs.close()
    trainers = [member(extra + o, tmp_path, f"pop{k}")[0] for k, o in enumerate(CONFIGS)]
    before = [flat_params(t) for t in trainers]
    stats = first_update(trainers)
    valid = [int(t.collector.buffer.valid.sum()) for t in trainers]
    for k, trainer in enumerate(trainers):
        params, solo_stats, steps, generator = solo[k]
        assert not torch.equal(before[k], params)  # the update moved the parameters
        torch.testing.assert_close(flat_params(trainer), params, rtol=1e-4, atol=1e-5)
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "grad_norm"):
            assert stats[k][key] == pytest.approx(solo_stats[key], rel=1e-3, abs=1e-5), key
        assert trainer.optimizer.step_count == steps == 12
        assert torch.equal(trainer.generator.get_state(), generator)  # drew the solo run's permutations
        trainer.envs.close()
    if extra == []:
        assert len(set(valid)) > 1  # the members' minibatches differed in length: padding was exercised


def test_stacked_forward_equals_each_members_own_forward(tmp_path):
    trainers = [member([f"seed={s}", "env=pendulum"], tmp_path, f"m{s}")[0] for s in (1, 2)]
    population = Population(trainers)
    obs = torch.randn(2, 5, 3)
    actions = torch.randn(2, 5, 1)
    logp, ent, value = population.stacked.evaluate_actions(obs, actions)
    for k, trainer in enumerate(trainers):
        ref = trainer.network.evaluate_actions(obs[k], actions[k])
        for got, want in zip((logp[k], ent[k], value[k]), ref):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        trainer.envs.close()


def test_numpy_tanh_is_torch_tanh_forward_and_backward():
    """The stacked layers' tanh (numpy forward, torch's backward): values to float32 rounding, the
    gradient to float32 rounding of torch's formula on the same output, a float64 gradcheck, 0-d
    input, torch's own tanh off the float path, and no silent second derivative."""
    from ppo_lab.policies.layers import numpy_tanh

    x = (torch.randn(4, 64, 64) * 3).requires_grad_()
    y = numpy_tanh(x)
    want = torch.tanh(x)
    torch.testing.assert_close(y, want, rtol=2e-7, atol=2e-7)
    grad = torch.randn_like(y)
    (got_grad,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(got_grad, grad * (1 - y.detach() ** 2), rtol=1e-6, atol=1e-7)
    x64 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(numpy_tanh, (x64,))
    half = torch.randn(8, dtype=torch.bfloat16)
    assert torch.equal(numpy_tanh(half), torch.tanh(half))
    scalar = torch.tensor(0.5)
    torch.testing.assert_close(numpy_tanh(scalar), torch.tanh(scalar))
    with pytest.raises(RuntimeError):
        (g,) = torch.autograd.grad(numpy_tanh(x64).sum(), x64, create_graph=True)
        torch.autograd.grad(g.sum(), x64)


def test_member_draws_and_picks_are_each_members_own():
    """``draw`` with M generators fills row m with generator m's solo draw (same dtype); ``pick``
    on stacked values indexes each row as ``take_along_axis`` does."""
    from ppo_lab.policies.distributions import draw, pick

    for method, kwargs in [("standard_exponential", {}), ("standard_normal", {"dtype": np.float32}), ("random", {})]:
        stacked = draw([np.random.default_rng(s) for s in range(3)], method, (3, 4, 2), **kwargs)
        solo = np.stack([getattr(np.random.default_rng(s), method)((4, 2), **kwargs) for s in range(3)])
        assert stacked.dtype == solo.dtype and np.array_equal(stacked, solo), method
    values, index = np.random.rand(3, 4, 5).astype(np.float32), np.random.randint(0, 5, (3, 4))
    np.testing.assert_array_equal(pick(values, index), np.take_along_axis(values, index[..., None], axis=-1)[..., 0])
    np.testing.assert_array_equal(pick(values[0], index[0]), values[0][np.arange(4), index[0]])
    with pytest.raises(ValueError, match="3 generators for a draw of shape"):
        draw([np.random.default_rng(s) for s in range(3)], "random", (2, 4))


def test_networks_the_population_cannot_stack_are_named(tmp_path):
    lstm, _ = member(["network=lstm"], tmp_path, "lstm")
    assert "recurrent" in stack_refusal(lstm.network)
    with pytest.raises(ValueError, match="recurrent"):
        StackedActorCritic([lstm.network, lstm.network], torch.zeros(2, 1), torch.zeros(2, 1))
    other, _ = member(["network=lstm", "seed=2"], tmp_path, "lstm2")
    with pytest.raises(ValueError, match="cannot train as one population: recurrent"):
        Population([lstm, other])
    lstm.envs.close()
    other.envs.close()


def test_networks_of_one_shape_but_another_architecture_do_not_stack(tmp_path):
    """Stacked layers run the first member's activation and distribution for all: members whose
    parameter shapes agree but whose activation (or action distribution) differs would be
    trained as the first one."""
    first, _ = member([], tmp_path, "tanh")
    other, _ = member(["seed=2", "network.activation=relu"], tmp_path, "relu")
    with pytest.raises(ValueError, match="cannot train as one population: the members' networks differ in"):
        Population([first, other])
    assert "network.activation (('tanh', 'tanh') against ('relu', 'relu'))" in population_mod.population_refusal(
        [first, other])
    first.envs.close()
    other.envs.close()
    obs_space = gym.spaces.Box(-1.0, 1.0, (4,))
    four = ActorCritic(obs_space, gym.spaces.Discrete(4), ActionType.discrete, hidden_sizes=(8,))
    two_by_two = ActorCritic(obs_space, gym.spaces.MultiDiscrete([2, 2]), ActionType.discrete, hidden_sizes=(8,))
    assert "action distribution (('Categorical', None) against ('MultiCategorical', [2, 2]))" in \
        architecture_difference([four, two_by_two])
    assert architecture_difference([four, ActorCritic(obs_space, gym.spaces.Discrete(4), ActionType.discrete,
                                                      hidden_sizes=(8,))]) is None


def test_target_kl_stops_each_member_on_its_own(tmp_path):
    # Member 0 has a target no update can stay under; member 1 none: it runs every epoch.
    trainers = [member(["seed=1", "agent.target_kl=1e-9"], tmp_path, "a")[0],
                member(["seed=2"], tmp_path, "b")[0]]
    stats = first_update(trainers)
    assert stats[0]["epochs"] == 1 and stats[1]["epochs"] == 3
    assert trainers[0].optimizer.step_count == 4 and trainers[1].optimizer.step_count == 12
    # The stopped member is exactly where its solo run stops.
    solo, _ = member(["seed=1", "agent.target_kl=1e-9"], tmp_path, "solo")
    first_update([solo])
    torch.testing.assert_close(flat_params(trainers[0]), flat_params(solo), rtol=1e-4, atol=1e-5)
    for t in trainers + [solo]:
        t.envs.close()


@pytest.mark.parametrize("path", ["numpy", "autograd"])
def test_a_diverged_member_fails_alone_and_the_others_finish(tmp_path, monkeypatch, path):
    calls = {"n": 0}
    nan_row = np.array([1.0, np.nan, 1.0], dtype=np.float32)
    if path == "autograd":
        real = population_mod.ppo_losses

        def poisoned(*args, **kwargs):
            out = real(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] > 12:  # from the second update on, member 1's value loss is NaN
                out["value_loss"] = out["value_loss"] * torch.from_numpy(nan_row)
            return out

        monkeypatch.setattr(population_mod, "ppo_losses", poisoned)
    else:
        real = population_mod.ppo_clip_losses_and_grads

        def poisoned(*args, **kwargs):
            terms, d_logp, d_value, d_entropy = real(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] > 12:  # from the second update on, member 1's value loss and gradient are NaN
                terms["value_loss"], terms["loss"] = terms["value_loss"] * nan_row, terms["loss"] * nan_row
                d_value = d_value * nan_row[:, None]
            return terms, d_logp, d_value, d_entropy

        monkeypatch.setattr(population_mod, "ppo_clip_losses_and_grads", poisoned)
    trainers = [member([f"seed={s}"], tmp_path, f"m{s}")[0] for s in (1, 2, 3)]
    population = Population(trainers)
    if path == "autograd":
        population.numpy_refusal = "the test takes the autograd path"
    outcomes = population.fit()
    assert calls["n"] == 24  # two updates of 12 minibatch steps, all through the poisoned loss
    assert isinstance(outcomes[1], TrainingDiverged) and "train/loss is nan" in str(outcomes[1])
    assert "update 2" in str(outcomes[1])
    for k in (0, 2):
        assert isinstance(outcomes[k], dict) and math.isfinite(outcomes[k]["eval/episodic_return"])
        assert trainers[k].iteration == 2 and torch.isfinite(flat_params(trainers[k])).all()
        assert (tmp_path / f"m{k + 1}" / "checkpoints" / "final.pt").is_file()
    assert not (tmp_path / "m2" / "checkpoints" / "final.pt").exists()
    for t in trainers:
        t.envs.close()


def test_per_member_learning_rates_step_each_row_by_its_own_rate(tmp_path):
    # Same seed and rollout; Adam's step is about lr per parameter: 1e-7 vs 1e-2.
    trainers = [member(["seed=1", "agent.learning_rate=1e-7", "agent.anneal_lr=false"], tmp_path, "small")[0],
                member(["seed=1", "agent.learning_rate=0.01", "agent.anneal_lr=false"], tmp_path, "large")[0]]
    before = [flat_params(t) for t in trainers]
    first_update(trainers)
    moved = [float((flat_params(t) - b).abs().max()) for t, b in zip(trainers, before)]
    assert 0 < moved[0] < 4e-6 and moved[1] > 1e-3  # Adam moves a parameter at most ~3.2 lr per early step
    for t in trainers:
        t.envs.close()


def test_a_member_whose_final_phase_fails_keeps_its_own_error(tmp_path):
    trainers = [member([f"seed={s}", "total_timesteps=128"], tmp_path, f"f{s}")[0] for s in (1, 2)]

    def broken():
        raise OSError("disk full while writing final.pt")

    trainers[0].finish = broken
    outcomes = Population(trainers).fit()
    assert isinstance(outcomes[0], OSError) and "disk full" in str(outcomes[0])
    assert isinstance(outcomes[1], dict) and outcomes[1]["global_step"] == 128
    for t in trainers:
        t.envs.close()


@pytest.mark.parametrize("space, action_type", [
    (gym.spaces.Discrete(3), ActionType.discrete),
    (gym.spaces.MultiDiscrete([3, 2]), ActionType.discrete),
    (gym.spaces.MultiBinary(3), ActionType.discrete),
    (gym.spaces.Box(-1.0, 1.0, (2,)), ActionType.continuous),
], ids=["discrete", "multidiscrete", "multibinary", "box"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_stacked_rollout_policy_acts_as_each_members_own(space, action_type, masked):
    """One batched numpy forward for M members, each drawing from its own generator, gives each
    member the actions, log-probs and values its own snapshot gives with the same generator."""
    if masked and not isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete)):
        pytest.skip("masks apply to Discrete and MultiDiscrete actions")
    obs_space = gym.spaces.Box(-np.inf, np.inf, (4,))
    policies = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = ActorCritic(obs_space, space, action_type, hidden_sizes=(16, 8),
                          log_std_init=-0.3 * seed)
        policies.append(net.inference_policy())
    stacked = StackedMLPPolicy(policies)
    obs = np.random.default_rng(0).normal(size=(3, 5, 4))
    width = 5 if isinstance(space, gym.spaces.MultiDiscrete) else 3
    mask = np.random.default_rng(1).random((3, 5, width)) < 0.6 if masked else None
    if mask is not None:
        mask[..., 0] = True  # every component keeps a valid action
        if width == 5:
            mask[..., 3] = True
    kwargs = {} if mask is None else {"mask": mask}
    got = stacked.act(obs, [np.random.default_rng(10 + m) for m in range(3)], **kwargs)
    for m, policy in enumerate(policies):
        want = policy.act(obs[m], np.random.default_rng(10 + m), **({} if mask is None else {"mask": mask[m]}))
        np.testing.assert_array_equal(got[0][m], want[0])  # the same draws, the same actions
        np.testing.assert_allclose(got[1][m], want[1], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[2][m], want[2], rtol=1e-6, atol=1e-6)
    if mask is not None and width == 3:
        assert all(mask[m][np.arange(5), got[0][m]].all() for m in range(3))  # only valid actions drawn


def test_stacked_rollout_policy_refuses_what_it_does_not_know():
    obs_space = gym.spaces.Box(-np.inf, np.inf, (4,))
    small = ActorCritic(obs_space, gym.spaces.Discrete(2), ActionType.discrete, hidden_sizes=(8,)).inference_policy()
    wide = ActorCritic(obs_space, gym.spaces.Discrete(2), ActionType.discrete, hidden_sizes=(16,)).inference_policy()
    assert "differ in architecture" in StackedMLPPolicy.refusal([small, wide])
    with pytest.raises(ValueError, match="cannot stack these policies"):
        StackedMLPPolicy([small, wide])


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_lockstep_rollouts_fill_each_members_solo_buffer(tmp_path, monkeypatch, env):
    """A population's rollout goes through the stacked policy, and each member's buffer is the
    one its solo rollout fills (same actions, rewards, dones; log-probs and values to rounding).
    Pendulum normalizes observations and rewards, each member with its own gamma, in one store
    shared by the members: each member's normalized observations and rewards are its solo run's."""
    calls = {"n": 0}
    real = StackedMLPPolicy.__call__

    def counted(self, obs):
        calls["n"] += 1
        return real(self, obs)

    def overrides(s):
        return [f"seed={s}"] if env == "cartpole" else [f"seed={s}", "env=pendulum", f"agent.gamma={0.9 + 0.03 * s}"]

    solo = []
    for s in (1, 2, 3):
        trainer, _ = member(overrides(s), tmp_path, f"solo{s}")
        buf, _ = trainer.collector.collect(trainer.network)
        solo.append({k: getattr(buf, k).copy() for k in ("obs", "actions", "logprobs", "values", "rewards",
                                                          "terminated", "truncated", "valid", "next_value")})
        trainer.envs.close()
    monkeypatch.setattr(StackedMLPPolicy, "__call__", counted)
    trainers = [member(overrides(s), tmp_path, f"pop{s}")[0] for s in (1, 2, 3)]
    population = Population(trainers)
    assert population.shared_normalization == (env == "pendulum")
    population.collect(range(3))
    assert calls["n"] == 32 + 1  # one batched forward per step, and one for the bootstrap values
    for trainer, want in zip(trainers, solo):
        buf = trainer.collector.buffer
        for key, value in want.items():
            if key in ("logprobs", "values", "next_value"):
                np.testing.assert_allclose(getattr(buf, key), value, rtol=1e-6, atol=1e-6, err_msg=key)
            else:
                np.testing.assert_array_equal(getattr(buf, key), value, err_msg=key)
        trainer.envs.close()


def test_a_member_whose_env_fails_mid_rollout_fails_alone(tmp_path):
    trainers = [member([f"seed={s}"], tmp_path, f"e{s}")[0] for s in (1, 2, 3)]
    real_step, calls = trainers[1].envs.step, {"n": 0}

    def failing(action):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("simulator crashed")
        return real_step(action)

    trainers[1].envs.step = failing
    outcomes = Population(trainers).fit()
    assert isinstance(outcomes[1], RuntimeError) and "simulator crashed" in str(outcomes[1])
    for k in (0, 2):
        assert isinstance(outcomes[k], dict) and outcomes[k]["global_step"] == 256
    for t in trainers:
        t.envs.close()
