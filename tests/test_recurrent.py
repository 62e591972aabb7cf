"""Recurrent policies (network=lstm|gru): the core's replay equals step-by-step acting, the state
resets exactly at episode starts, the sequence minibatch layout, the rollout's stored state and
episode starts, evaluation, exact resume, and short real runs."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import compose_cfg
from ppo_lab.commands.train import train
from ppo_lab.config import ActionType, ConfigError
from ppo_lab.config.validation import to_typed
from ppo_lab.io.checkpoint import load_checkpoint
from ppo_lab.policies import ActorCritic
from ppo_lab.policies.recurrent import RecurrentCore
from ppo_lab.training.rollout import RolloutCollector, TrainingBatch

from test_resume import steps_logged, train_until_sigterm

BOX = gym.spaces.Box(-1, 1, (3,), np.float32)


def step_by_step(core, x, state, starts):
    """The reference: one ``step`` per time step, resets by ``1 - episode_start``."""
    T, B = starts.shape
    outs = []
    for t in range(T):
        out, state = core.step(x[t * B:(t + 1) * B], state, starts[t])
        outs.append(out)
    return torch.cat(outs), state


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sequence_replay_equals_step_by_step_acting(kind):
    torch.manual_seed(0)
    core = RecurrentCore(kind, 5, 8)
    T, B = 12, 3
    x, state = torch.randn(T * B, 5), torch.randn(B, core.state_size)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0, 1] = starts[4, 0] = starts[4, 2] = starts[9, 1] = True  # incl. one at t = 0
    reference, _ = step_by_step(core, x, state, starts)
    torch.testing.assert_close(core.sequence(x, state, starts), reference, rtol=0, atol=1e-6)
    # And with no episode start at all (one rnn call over the whole sequence).
    none = torch.zeros(T, B, dtype=torch.bool)
    torch.testing.assert_close(core.sequence(x, state, none), step_by_step(core, x, state, none)[0],
                               rtol=0, atol=1e-6)


def test_state_resets_exactly_at_episode_starts():
    torch.manual_seed(1)
    core = RecurrentCore("lstm", 4, 6)
    assert core.state_size == 12
    x, carried = torch.randn(2, 4), torch.randn(2, 12)
    out, new = core.step(x, carried, torch.tensor([True, False]))
    fresh, fresh_state = core.step(x[:1], torch.zeros(1, 12), torch.tensor([False]))
    continued, _ = core.step(x[1:], carried[1:], torch.tensor([False]))
    torch.testing.assert_close(out[0], fresh[0])  # row 0 started from zeros
    torch.testing.assert_close(out[1], continued[0])  # row 1 kept its state
    torch.testing.assert_close(new[0], fresh_state[0])
    # LSTM state layout [h, c]; the output is h.
    torch.testing.assert_close(new[:, :6], out)


@pytest.mark.parametrize("shared", [True, False])
def test_network_forward_sequence_equals_its_steps(shared):
    torch.manual_seed(2)
    net = ActorCritic(BOX, gym.spaces.Discrete(2), ActionType.discrete, shared=shared,
                      hidden_sizes=[16], core="lstm", core_size=8)
    assert net.recurrent_state_size == (16 if shared else 32)
    T, B = 7, 2
    obs = torch.randn(T * B, 3)
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[3, 1] = True
    state = torch.randn(B, net.recurrent_state_size)
    params, values, s = [], [], state
    for t in range(T):
        p, v, s = net(obs[t * B:(t + 1) * B], s, starts[t])
        params.append(p)
        values.append(v)
    seq_params, seq_values = net.forward_sequence(obs, state, starts)
    torch.testing.assert_close(seq_params, torch.cat(params), rtol=0, atol=1e-6)
    torch.testing.assert_close(seq_values, torch.cat(values), rtol=0, atol=1e-6)


def test_sequence_minibatches_split_envs_and_keep_whole_sequences():
    T, N = 3, 4
    ar = torch.arange(T * N)
    valid = torch.ones(T, N, dtype=torch.bool)
    valid[1, 2] = False  # an autoreset step of env 2
    batch = TrainingBatch(obs=ar.float().unsqueeze(-1), actions=ar, logprobs=ar.float(), values=ar.float(),
                          advantages=ar.float(), returns=ar.float(), valid=torch.nonzero(valid.reshape(-1)).squeeze(-1),
                          num_envs=N, valid_mask=valid, episode_starts=torch.zeros(T, N, dtype=torch.bool),
                          initial_state=torch.arange(N).float().unsqueeze(-1) * 10)
    torch.manual_seed(0)
    mbs = batch.sequence_minibatches(2)
    assert len(mbs) == 2
    seen = []
    for mb in mbs:
        envs = mb.state[:, 0].long() // 10  # the initial state of env e is 10 * e
        seen += envs.tolist()
        rows = [t * N + e for t in range(T) for e in envs.tolist()]  # time-major over the group's envs
        assert mb.actions.tolist() == rows and mb.obs[:, 0].long().tolist() == rows
        scored = [r for r in rows if r != 1 * N + 2]
        assert mb.logprobs.long().tolist() == scored and mb.advantages.long().tolist() == scored
        assert mb.actions[mb.select].tolist() == scored
        assert mb.episode_starts.shape == (T, 2)
    assert sorted(seen) == [0, 1, 2, 3]  # every env exactly once per epoch
    with pytest.raises(ValueError, match="num_minibatches=5 exceeds agent.num_envs=4"):
        batch.sequence_minibatches(5)


def make_lstm_collector(num_envs=3, num_steps=40, seed=0):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    torch.manual_seed(seed)
    net = ActorCritic(envs.single_observation_space, envs.single_action_space, ActionType.discrete,
                      hidden_sizes=[16], core="lstm", core_size=8)
    return RolloutCollector(envs, num_steps, seed), net


def test_rollout_stores_episode_starts_and_initial_state_and_replays_its_logprobs():
    collector, net = make_lstm_collector()
    buf, _ = collector.collect(net)
    assert buf.episode_starts[0].all()  # the first step after reset
    np.testing.assert_array_equal(buf.initial_state, 0.0)
    # An episode starts exactly at the step after each autoreset step (valid = False).
    expected = np.zeros_like(buf.episode_starts)
    expected[0] = True
    expected[1:] = ~buf.valid[:-1]
    np.testing.assert_array_equal(buf.episode_starts, expected)
    assert (~buf.valid).any(), "the test needs an episode to end inside the rollout"
    # The loss's replay from the stored state gives the log-probs and values the rollout acted with.
    T, N = buf.valid.shape
    logp, _, value = net.evaluate_actions(torch.from_numpy(buf.obs.reshape(T * N, -1)),
                                          torch.from_numpy(buf.actions.reshape(-1)),
                                          state=torch.from_numpy(buf.initial_state),
                                          episode_start=torch.from_numpy(buf.episode_starts))
    np.testing.assert_allclose(logp.detach().numpy(), buf.logprobs.reshape(-1), atol=1e-5)
    np.testing.assert_allclose(value.detach().numpy(), buf.values.reshape(-1), atol=1e-5)
    # The next rollout starts from the state the last one ended with.
    end_state = collector.state.copy()
    assert np.abs(end_state).sum() > 0
    buf2, _ = collector.collect(net)
    np.testing.assert_array_equal(buf2.initial_state, end_state)


def test_recurrent_checks_before_training():
    with pytest.raises(ConfigError, match="agent.num_minibatches=4 exceeds agent.num_envs=2"):
        to_typed(compose_cfg(["network=lstm", "agent.num_envs=2", "agent.num_steps=64", "agent.num_minibatches=4"]))
    with pytest.raises(ConfigError, match="network.core='rnn'.*one of none, lstm, gru"):
        to_typed(compose_cfg(["network=lstm", "network.core=rnn"]))


LSTM_RUN = ["network=lstm", "logger=none", "progress=false", "agent.num_envs=4", "agent.num_steps=64",
            "agent.num_minibatches=2", "agent.update_epochs=2", "total_timesteps=5120", "checkpoint_interval=5",
            "eval_episodes=2", "seed=3"]


def test_lstm_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
    """The checkpoint holds the carried state: a resumed CartPole LSTM run equals the uninterrupted one."""
    full, parted = tmp_path / "full", tmp_path / "parted"
    train(compose_cfg(LSTM_RUN), full)
    train_until_sigterm(monkeypatch, LSTM_RUN, parted, 7 * 256)
    saved = load_checkpoint(parted / "checkpoints" / "update_000007.pt")["collector"]
    assert saved["recurrent_state"].shape == (4, 256)  # 2 cores x [h, c] x 64
    assert saved["recurrent_state"].abs().sum() > 0
    train(compose_cfg(["logger=none", f"resume={parted}"]), tmp_path / "ignored")
    assert steps_logged(parted) == steps_logged(full)
    a = load_checkpoint(full / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(parted / "checkpoints" / "final.pt")["model"]
    assert any("actor_core" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("network", ["lstm", "gru"])
def test_short_popgym_run_with_a_recurrent_core(tmp_path, network):
    final = train(compose_cfg(["env=popgym_cartpole", f"network={network}", "logger=none", "progress=false",
                               "agent.num_envs=8", "total_timesteps=2048", "eval_episodes=2"]), tmp_path)
    assert final["global_step"] == 2048
    state = load_checkpoint(tmp_path / "checkpoints" / "final.pt")
    assert state["config"]["network"]["core"] == network
    assert any(k.startswith("actor_core.rnn") for k in state["model"])


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lstm_run")
    train(compose_cfg(["env=popgym_cartpole", "logger=none", "progress=false", "agent.num_envs=8",
                       "total_timesteps=4096", "eval_episodes=2"]), run_dir)
    return run_dir


def test_predict_carries_the_state_and_replays_the_evaluation_episode(lstm_run):
    import ppo_lab
    agent = ppo_lab.load(lstm_run)
    evaluated = agent.evaluate(episodes=1, seed=123)["episodes"][0]
    env = agent.make_env()
    obs, _ = env.reset(seed=123)
    state, start, total, steps, done = None, True, 0.0, 0, False
    while not done:
        action, state = agent.predict(obs, state, episode_start=start, deterministic=True)
        assert state.shape == (agent.network.recurrent_state_size,)
        obs, reward, terminated, truncated, _ = env.step(action)
        total, steps, start, done = total + reward, steps + 1, False, terminated or truncated
    assert (total, steps) == pytest.approx((evaluated["return"], evaluated["length"]))
    # A batch carries one state per row; episode_start zeroes exactly its rows.
    batch = np.zeros((4, 2), np.float32)
    _, s1 = agent.predict(batch, None, np.ones(4, bool))
    _, s2 = agent.predict(batch + 0.3, s1, np.zeros(4, bool))
    _, s3 = agent.predict(batch + 0.3, s1, np.array([True, False, False, False]))
    _, fresh = agent.predict(batch[:1] + 0.3, None, None)
    assert s2.shape == (4, agent.network.recurrent_state_size) and not np.allclose(s1, s2)
    np.testing.assert_allclose(s3[1:], s2[1:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(s3[0], fresh[0], rtol=0, atol=1e-6)  # batch sizes round differently
    with pytest.raises(ValueError, match=r"state has shape \(3, .*allowed: \(4, "):
        agent.predict(batch, s1[:3], None)


def test_export_refuses_a_recurrent_policy_and_names_the_way_out(lstm_run):
    from ppo_lab.api.export import export
    with pytest.raises(ConfigError, match="it is recurrent.*predict\\(obs, state, episode_start\\)"):
        export(lstm_run, "onnx")


def test_cnn_lstm_reads_frames_and_replays_them_like_its_steps():
    torch.manual_seed(3)
    frames = gym.spaces.Box(0, 255, (4, 36, 36), np.uint8)
    net = ActorCritic(frames, gym.spaces.Discrete(3), ActionType.discrete, kind="cnn", shared=True,
                      hidden_sizes=[32], activation="relu", core="lstm", core_size=16)
    T, B = 4, 2
    obs = torch.randint(0, 256, (T * B, 4, 36, 36), dtype=torch.uint8)
    starts = torch.tensor([[True, True], [False, False], [False, True], [False, False]])
    state = torch.zeros(B, net.recurrent_state_size)
    stepped, s = [], state
    for t in range(T):
        p, _, s = net(obs[t * B:(t + 1) * B], s, starts[t])
        stepped.append(p)
    torch.testing.assert_close(net.forward_sequence(obs, state, starts)[0], torch.cat(stepped), rtol=0, atol=1e-6)


def test_a_masked_recurrent_run_never_takes_an_invalid_action(tmp_path, monkeypatch):
    """Masks and an LSTM compose in the one trainer: MaskedChoice raises on any invalid action,
    so the run and its evaluations finish only if every sampled and replayed mask was honoured."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "userland"))
    result = train(compose_cfg(["debug=fast", "env.id=mymasked:MaskedChoice-v0", "network=lstm", "total_timesteps=2048",
                                "agent.num_envs=4", "agent.num_steps=64", "agent.num_minibatches=2",
                                "eval_interval=4", "eval_deterministic=false"]), tmp_path)
    assert result["global_step"] == 2048
    import ppo_lab
    agent = ppo_lab.load(tmp_path)
    assert agent.masked and agent.network.recurrent_state_size > 0
    assert len(agent.evaluate(episodes=2, deterministic=False)["episodes"]) == 2


def test_the_masked_replay_of_a_recurrent_rollout_gives_its_logprobs(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "userland"))
    import mymasked  # noqa: F401  (registers MaskedChoice-v0)
    from ppo_lab.config import ActionMasking
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("MaskedChoice-v0") for _ in range(3)],
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    torch.manual_seed(4)
    net = ActorCritic(envs.single_observation_space, envs.single_action_space, ActionType.discrete,
                      hidden_sizes=[16], core="gru", core_size=8)
    collector = RolloutCollector(envs, 25, 0, action_masking=ActionMasking.auto)
    buf, _ = collector.collect(net)
    assert buf.masks is not None and (~buf.masks).any() and (~buf.valid).any()
    T, N = buf.valid.shape
    logp, _, _ = net.evaluate_actions(torch.from_numpy(buf.obs.reshape(T * N, -1)),
                                      torch.from_numpy(buf.actions.reshape(-1)),
                                      mask=torch.from_numpy(buf.masks.reshape(T * N, -1)),
                                      state=torch.from_numpy(buf.initial_state),
                                      episode_start=torch.from_numpy(buf.episode_starts))
    valid = buf.valid.reshape(-1)
    np.testing.assert_allclose(logp.detach().numpy()[valid], buf.logprobs.reshape(-1)[valid], atol=1e-5)


def test_a_masked_lstm_on_dict_observations_is_one_config(tmp_path, monkeypatch):
    """Dict observations (PettingZoo's observation + action_mask), masks from the Dict entry and an
    LSTM, in one run: MaskedChoiceDict raises on any invalid action."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "userland"))
    result = train(compose_cfg(["debug=fast", "env.id=mymasked:MaskedChoiceDict-v0", "network=lstm",
                                "total_timesteps=1024", "agent.num_envs=4", "agent.num_steps=64",
                                "agent.num_minibatches=2", "eval_deterministic=false"]), tmp_path)
    assert result["global_step"] == 1024
    import ppo_lab
    agent = ppo_lab.load(tmp_path)
    assert agent.masked and agent.network.recurrent_state_size > 0
    env = agent.make_env()
    obs, _ = env.reset(seed=0)
    state, start = None, True
    for _ in range(10):  # predict reads the mask from the Dict observation and carries the state
        action, state = agent.predict(obs, state, episode_start=start, deterministic=False)
        obs, _, terminated, truncated, _ = env.step(action)
        start = False
        if terminated or truncated:
            break
