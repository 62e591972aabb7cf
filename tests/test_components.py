"""The parts the trainer is handed: the buffer's minibatches, components composing a checkpoint,
the env family deciding exact env state, the network protocol, sinks and callbacks."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from conftest import compose_cfg
from ppo_lab.config import ActionType, ConfigError, EnvConfig, to_typed
from ppo_lab.envs import NormalizationStats, env_family, make_vec_env
from ppo_lab.envs.families import EnvFamily
from ppo_lab.io.checkpoint import CheckpointError, load_components, state_of
from ppo_lab.io.sinks import JsonlSink, SinkContext, Sinks, Video, build_sinks
from ppo_lab.policies import ActorCritic, FusedMLPPolicy, check_network
from ppo_lab.training.callbacks import Callback
from ppo_lab.training.rollout import TrainingBatch
from test_details import Recorder, make_trainer


def test_minibatch_order_covers_each_valid_step_once_and_skips_autoreset_steps():
    torch.manual_seed(0)
    n = 12
    valid = torch.tensor([0, 1, 2, 4, 5, 7, 8, 9, 11])  # steps 3, 6 and 10 are autoreset steps
    ids = torch.arange(n, dtype=torch.float32)
    batch = TrainingBatch(obs=ids[:, None], actions=ids.long(), logprobs=ids, values=ids, advantages=ids,
                          returns=ids, valid=valid)
    epochs = [batch.minibatch_indices(4) for _ in range(2)]
    for parts in epochs:
        assert sorted(torch.cat(parts).tolist()) == valid.tolist()  # each valid step exactly once
        assert [len(p) for p in parts] == [3, 2, 2, 2]  # as even as possible
    orders = [torch.cat(parts).tolist() for parts in epochs]
    assert orders[0] != orders[1]  # a fresh permutation per epoch


def test_the_updates_minibatches_keep_the_fields_of_one_step_together(tmp_path):
    """What the update gathers (``Population._minibatches``): the rows of the drawn order, each
    step's observation, action, log-prob, value, advantage and return together."""
    trainer, _ = make_trainer(["total_timesteps=256"], tmp_path)
    ids = torch.arange(12, dtype=torch.float32)
    batch = TrainingBatch(obs=ids[:, None].expand(12, 4).contiguous(), actions=ids.long(), logprobs=ids,
                          values=ids, advantages=ids, returns=ids, valid=torch.tensor([0, 1, 2, 4, 5, 7, 8, 9, 11]))
    population = trainer.own_population()
    expected = batch.minibatch_indices(4, trainer.generator.clone_state())
    minibatches = population._minibatches([batch], population._stack([batch]), [True], 4)
    assert [steps for _, steps in minibatches] == [[True]] * 4
    for (mb, _), rows in zip(minibatches, expected):
        for field in (mb.obs[0, :, 0], mb.actions[0].float(), mb.logprobs[0], mb.values[0], mb.advantages[0],
                      mb.returns[0]):
            assert torch.equal(field, rows.float())
    trainer.envs.close()


def test_empty_minibatches_are_left_out():
    batch = TrainingBatch(*(torch.zeros(4) for _ in range(6)), valid=torch.tensor([0, 2]))
    assert [len(rows) for rows in batch.minibatch_indices(4)] == [1, 1]


def test_checkpoint_composes_each_components_own_state(tmp_path):
    trainer, _ = make_trainer(["total_timesteps=256"], tmp_path)
    trainer.exact_env_state = True  # what the wiring passes for a classic-control family
    trainer.fit()
    state = trainer.state_dict()
    for name, part in trainer.components().items():
        own = part.state_dict()
        assert state[name].keys() == own.keys() if isinstance(own, dict) else len(state[name]) == len(own)
    assert all(torch.equal(state["model"][k], v) for k, v in trainer.network.state_dict().items())
    assert state["sinks"] == {}  # the Recorder sink has no state
    assert state["env_state"] is not None and state["collector"] is not None  # classic: exact


def test_the_family_not_the_trainer_decides_exact_env_state(tmp_path):
    assert env_family(EnvConfig(family="classic")).exact_state
    assert not env_family(EnvConfig(family="box2d")).exact_state
    cfg = to_typed(compose_cfg(["logger=none", "env.family=box2d"]))  # CartPole as if it were Box2D
    from ppo_lab.commands.train import train

    train(compose_cfg(["debug=fast", "env.family=box2d", "total_timesteps=256"]), tmp_path)
    final = torch.load(tmp_path / "checkpoints" / "final.pt", weights_only=True)
    assert final["env_state"] is None and final["collector"] is None
    assert cfg.env.family == "box2d"


class ShiftedFamily(EnvFamily):
    """A user's family: every env is wrapped to add ``shift`` to the observation."""

    name = "shifted"

    def __init__(self, shift: float = 100.0) -> None:
        self.shift = shift

    def wrap(self, env, cfg):
        return gym.wrappers.TransformObservation(env, lambda o: o + self.shift, env.observation_space)


def test_a_users_family_is_instantiated_from_its_target():
    cfg = EnvConfig(id="CartPole-v1", vectorization="sync",
                    family={"_target_": "test_components.ShiftedFamily", "shift": 50.0})
    envs = make_vec_env(cfg, 2)
    obs, _ = envs.reset(seed=0)
    envs.close()
    assert np.all(obs[:, 0] > 40)  # CartPole's position is within +-0.05 at reset
    with pytest.raises(ConfigError, match="env.family='nope' is not a family; allowed: classic, box2d"):
        env_family(EnvConfig(family="nope"))
    with pytest.raises(ConfigError, match=r"unknown key env.family.shfit .*did you mean shift"):
        env_family(EnvConfig(family={"_target_": "test_components.ShiftedFamily", "shfit": 1}))


def test_load_components_names_the_part_that_does_not_fit(tmp_path):
    trainer, _ = make_trainer(["total_timesteps=256"], tmp_path)
    state = state_of({"model": trainer.network})
    state["model"]["policy_head.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError, match="checkpoint part 'model' does not fit"):
        load_components({"model": trainer.network}, state)


def test_normalization_component_round_trips_and_freezes():
    cfg = EnvConfig(id="Pendulum-v1", normalize_obs=True)
    envs = make_vec_env(cfg, 2)
    envs.reset(seed=0)
    for _ in range(5):
        envs.step(envs.action_space.sample())
    saved = NormalizationStats(envs).state_dict()
    other = make_vec_env(cfg, 2)
    stats = NormalizationStats(other)
    stats.load_state_dict(saved, freeze=True)
    other.reset(seed=1)
    other.step(other.action_space.sample())
    torch.testing.assert_close(stats.state_dict()["obs"]["mean"], saved["obs"]["mean"])
    envs.close(), other.close()


class NoProtocol(nn.Module):
    def forward(self, obs):
        return obs


def test_a_network_without_the_protocol_is_refused_with_what_is_missing():
    with pytest.raises(ConfigError, match="missing evaluate_actions, inference_policy, after_optimizer_step, policy_stats"):
        check_network(NoProtocol(), "mymod.NoProtocol")
    check_network(ActorCritic(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)), "ppo_lab.policies.ActorCritic")


def test_the_numpy_fast_path_refuses_what_it_does_not_know():
    cnn = ActorCritic(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(3), kind="cnn",
                      hidden_sizes=[32], activation="relu")
    with pytest.raises(TypeError, match="needs MLP trunks"):
        FusedMLPPolicy(cnn)
    mlp = ActorCritic(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), ActionType.discrete)
    mlp.actor_trunk.activation_name = "gelu"  # a layer the numpy path has no twin of
    with pytest.raises(TypeError, match="no numpy form of activations"):
        FusedMLPPolicy(mlp)


class StopAtSecondUpdate(Callback):
    def __init__(self):
        self.calls = []

    def on_training_start(self, run):
        self.calls.append(("start", run.global_step))

    def on_update_end(self, run, metrics):
        self.calls.append(("update", run.iteration))
        policy = run.policy()  # a snapshot: acting through it leaves training alone
        policy.act(np.zeros((1, 4), dtype=np.float32), np.random.default_rng(0))
        return run.iteration >= 2

    def on_eval_end(self, run, metrics):
        self.calls.append(("eval", metrics["eval/episodic_return"] > 0))

    def on_training_end(self, run, result):
        self.calls.append(("end", result["stopped_by"]))


def test_a_callback_stops_training_after_its_update_and_the_run_still_finishes(tmp_path):
    trainer, rec = make_trainer(["total_timesteps=1024"], tmp_path)  # 4 updates of 256 steps
    callback = StopAtSecondUpdate()
    trainer.callbacks = {"stopper": callback}
    result = trainer.fit()
    assert callback.calls == [("start", 0), ("update", 1), ("update", 2), ("eval", True), ("end", "stopper")]
    assert result["stopped_by"] == "stopper" and trainer.iteration == 2
    assert result["global_step"] == 2 * trainer.cfg.agent.batch_size
    assert (tmp_path / "checkpoints" / "final.pt").is_file()
    assert rec.series("train/update") == [1, 2]


def test_sinks_fan_out_keep_state_and_close_even_when_one_fails_to_start(tmp_path):
    jsonl_closed = []
    real_finish = JsonlSink.finish
    JsonlSink.finish = lambda self, code=0: (jsonl_closed.append(code), real_finish(self, code))
    try:
        with pytest.raises(ConfigError, match=r"logger.bad: building test_components.FailingSink failed \(RuntimeError: no server\)"):
            build_sinks({"bad": {"_target_": "test_components.FailingSink"}}, SinkContext(run_dir=tmp_path))
    finally:
        JsonlSink.finish = real_finish
    assert jsonl_closed == [1]
    rec = Recorder()
    sinks = Sinks({"jsonl": JsonlSink(SinkContext(run_dir=tmp_path / "b")), "rec": rec})
    sinks.log({"eval/video": Video("/x/v.mp4"), "train/loss": float("nan")}, 7)
    sinks.finish(0)
    row = (tmp_path / "b" / "metrics.jsonl").read_text().strip()
    assert row == '{"global_step": 7, "eval/video": "/x/v.mp4", "train/loss": null}'
    assert rec.rows[0]["eval/video"] == Video("/x/v.mp4")


class FailingSink:
    def __init__(self, context):
        raise RuntimeError("no server")
