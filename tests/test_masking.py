"""Invalid-action masking (``agent.action_masking``): masked distributions pinned on hand cases,
numpy and torch paths agreeing, masks read from infos and Dict observations, a whole training
run on an env whose invalid actions raise, evaluation, the API, and export."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import ROOT, compose_cfg
from ppo_lab.commands.train import train
from ppo_lab.config import ActionMasking, ConfigError
from ppo_lab.envs import masking_enabled, read_action_mask
from ppo_lab.policies.distributions import MASKED_LOGIT, Categorical, MultiCategorical
from ppo_lab.training.rollout import RolloutCollector

USERLAND = ROOT / "tests" / "userland"


@pytest.fixture
def userland(monkeypatch):
    """tests/userland on sys.path, as PYTHONPATH=tests/userland gives a user's run."""
    monkeypatch.syspath_prepend(str(USERLAND))


# ---------------------------------------------------------------------------- distributions

LOGITS = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
MASK = np.array([[True, False, True, False]])


def test_masked_log_probs_and_entropy_equal_the_hand_computed_renormalization():
    # Valid actions 0 and 2 with logits 1 and 3: p = softmax([1, 3]) = [1, e^2] / (1 + e^2).
    p0, p2 = 1 / (1 + np.e ** 2), np.e ** 2 / (1 + np.e ** 2)
    entropy = -(p0 * np.log(p0) + p2 * np.log(p2))
    dist = Categorical()
    for action, p in ((0, p0), (2, p2)):
        np.testing.assert_allclose(dist.log_prob(LOGITS, np.array([action]), MASK), [np.log(p)], rtol=1e-6)
        logp, ent = dist.log_prob_entropy(torch.from_numpy(LOGITS), torch.tensor([action]), torch.from_numpy(MASK))
        torch.testing.assert_close(logp, torch.tensor([np.log(p)], dtype=torch.float32))
        torch.testing.assert_close(ent, torch.tensor([entropy], dtype=torch.float32))
    assert dist.mode(LOGITS, MASK).item() == 2 and dist.mode(LOGITS).item() == 3


def test_masked_logits_get_no_gradient_and_nothing_is_nan():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 50.0, -50.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False, False, True, False]])
    logp, ent = Categorical().log_prob_entropy(logits, torch.tensor([0, 2]), mask)
    (logp.sum() + ent.sum()).backward()
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all() and torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()
    torch.testing.assert_close(logp[1], torch.tensor(0.0))  # the only valid action: probability 1
    torch.testing.assert_close(ent[1], torch.tensor(0.0))


def test_numpy_and_torch_paths_agree_on_random_masks():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(256, 6)).astype(np.float32) * 3
    mask = rng.random((256, 6)) < 0.5
    mask[np.arange(256), rng.integers(0, 6, 256)] = True
    actions, logp = Categorical().sample(logits, rng, mask)
    assert mask[np.arange(256), actions].all()
    t_logp, _ = Categorical().log_prob_entropy(torch.from_numpy(logits), torch.from_numpy(actions), torch.from_numpy(mask))
    np.testing.assert_allclose(logp, t_logp.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Categorical().log_prob(logits, actions, mask), logp, rtol=1e-6)
    # An all-valid mask is the unmasked distribution.
    full = np.ones_like(mask)
    np.testing.assert_allclose(Categorical().log_prob(logits, actions, full), Categorical().log_prob(logits, actions))


def test_sampling_never_returns_a_masked_action_over_many_draws():
    logits = np.array([[0.0, 8.0, 1.0, 8.0]], np.float32).repeat(50_000, axis=0)  # masked ones most likely
    mask = np.array([[True, False, True, False]]).repeat(50_000, axis=0)
    actions, logp = Categorical().sample(logits, np.random.default_rng(0), mask)
    assert set(np.unique(actions)) == {0, 2} and np.isfinite(logp).all()
    p2 = np.e / (1 + np.e)
    np.testing.assert_allclose((actions == 2).mean(), p2, atol=0.01)


def test_multidiscrete_is_masked_per_component():
    # Components of 3 and 2 choices; mask [1,0,1 | 0,1]: component 0 over {0, 2}, component 1 forced to 1.
    logits = np.array([[1.0, 5.0, 2.0, 3.0, -1.0]], np.float32)
    mask = np.array([[True, False, True, False, True]])
    dist = MultiCategorical([3, 2])
    np.testing.assert_array_equal(dist.mode(logits, mask), [[2, 1]])
    expected = np.log(np.e ** 2 / (np.e + np.e ** 2)) + 0.0
    np.testing.assert_allclose(dist.log_prob(logits, np.array([[2, 1]]), mask), [expected], rtol=1e-6)
    logp, ent = dist.log_prob_entropy(torch.from_numpy(logits), torch.tensor([[2, 1]]), torch.from_numpy(mask))
    p = np.array([np.e, np.e ** 2]) / (np.e + np.e ** 2)
    torch.testing.assert_close(logp, torch.tensor([expected], dtype=torch.float32))
    torch.testing.assert_close(ent, torch.tensor([-(p * np.log(p)).sum()], dtype=torch.float32))
    actions, _ = dist.sample(logits.repeat(5000, 0), np.random.default_rng(0), mask.repeat(5000, 0))
    assert set(np.unique(actions[:, 0])) == {0, 2} and (actions[:, 1] == 1).all()


def test_masked_logit_is_sb3s():
    assert MASKED_LOGIT == -1e8


# ---------------------------------------------------------------------------- reading masks


def test_masks_are_read_from_vector_infos_and_dict_observations():
    infos = {"action_mask": np.array([[1, 0, 1], [0, 0, 0]], np.int8), "_action_mask": np.array([True, False])}
    np.testing.assert_array_equal(read_action_mask(np.zeros((2, 1)), infos, 3), [[1, 0, 1], [1, 1, 1]])
    obs = {"observation": np.zeros((2, 3)), "action_mask": np.array([[0, 1, 1], [1, 0, 0]], np.int8)}
    mask = read_action_mask(obs, {}, 3)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 0, 0]])
    assert read_action_mask(np.zeros((2, 1)), {}, 3) is None
    with pytest.raises(ConfigError, match=r"action_mask has shape \(3,\).*needs masks of 4 entries"):
        read_action_mask(np.zeros((2, 1)), infos, 4)


def test_auto_detection_and_the_on_and_off_rules():
    space = gym.spaces.Discrete(3)
    some = np.ones((2, 3), bool)
    assert masking_enabled(ActionMasking.auto, some, space, "X") is True
    assert masking_enabled(ActionMasking.auto, None, space, "X") is False
    assert masking_enabled(ActionMasking.off, some, space, "X") is False
    with pytest.raises(ConfigError, match=r"agent.action_masking=on, but env.id='X' gives no action mask.*allowed: agent.action_masking=auto or off"):
        masking_enabled(ActionMasking.on, None, space, "X")
    with pytest.raises(ConfigError, match=r"agent.action_masking=on, but env.id='X' has action space Box"):
        masking_enabled(ActionMasking.on, some, gym.spaces.Box(-1, 1, (3,)), "X")


def test_the_collector_detects_masks_at_the_first_reset(userland):
    import mymasked  # noqa: F401  (registers the ids)

    masked = gym.vector.SyncVectorEnv([lambda: gym.make("MaskedChoice-v0")] * 2)
    plain = gym.make_vec("CartPole-v1", num_envs=2)
    try:
        auto = RolloutCollector(masked, 8, seed=0, action_masking=ActionMasking.auto)
        assert auto.masking and auto.buffer.masks.shape == (8, 2, 4) and auto.next_mask.shape == (2, 4)
        assert RolloutCollector(plain, 8, seed=0, action_masking=ActionMasking.auto).buffer.masks is None
        assert RolloutCollector(masked, 8, seed=0, action_masking=ActionMasking.off).buffer.masks is None
        # Exact resume: the mask valid for next_obs is part of the collector's state.
        state = auto.state_dict()
        other = RolloutCollector(masked, 8, seed=5, action_masking=ActionMasking.auto)
        other.load_state_dict(state)
        np.testing.assert_array_equal(other.next_mask, auto.next_mask)

        class Net:  # a network acting uniformly, for the rollout only
            def inference_policy(self):
                from ppo_lab.policies import ActorCritic

                return ActorCritic(masked.single_observation_space, masked.single_action_space).inference_policy()

        buf, _ = auto.collect(Net())  # the env raises on an invalid action
        np.testing.assert_array_equal(buf.masks[1:].reshape(-1, 4).any(-1), True)
        assert buf.masks[np.arange(8)[:, None], np.arange(2)[None], buf.actions].all()
    finally:
        masked.close()
        plain.close()


# ---------------------------------------------------------------------------- training


def test_a_whole_training_run_never_takes_an_invalid_action(tmp_path, userland):
    """MaskedChoice raises ValueError on an invalid action and changes its mask every step: a run
    of 4096 steps (16 updates) and its evaluations finish only if no invalid action is ever taken."""
    result = train(compose_cfg(["debug=fast", "env.id=mymasked:MaskedChoice-v0", "total_timesteps=4096",
                                "eval_interval=4", "eval_deterministic=false"]), tmp_path)
    assert result["global_step"] == 4096 and 0.0 <= result["eval/episodic_return"] <= 10.0
    import ppo_lab

    agent = ppo_lab.load(tmp_path)
    assert agent.masked
    for deterministic in (True, False):
        assert len(agent.evaluate(episodes=3, deterministic=deterministic)["episodes"]) == 3
    # The masked run learned something the unmasked uniform policy does not: take the top valid action.
    assert result["eval/episodic_return"] > 5.0, result


def test_multidiscrete_masked_training_run(tmp_path, userland):
    result = train(compose_cfg(["debug=fast", "env.id=mymasked:MaskedChoiceMD-v0", "total_timesteps=1024"]), tmp_path)
    assert np.isfinite(result["eval/episodic_return"])


def test_action_masking_on_without_masks_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"agent.action_masking=on, but env.id='CartPole-v1' gives no action mask"):
        train(compose_cfg(["debug=fast", "agent.action_masking=on"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_action_masking_is_a_documented_enum_key():
    cfg = compose_cfg(["debug=fast", "agent.action_masking=off"])
    assert cfg.agent.action_masking == ActionMasking.off
    with pytest.raises(Exception, match="auto|on|off"):
        compose_cfg(["agent.action_masking=sometimes"])


def test_a_dict_observation_mask_trains(tmp_path, userland):
    """PettingZoo's convention: the mask is the Dict observation's action_mask entry (MaskedChoiceDict
    raises on an invalid action, so the run finishes only if every mask was read from there)."""
    result = train(compose_cfg(["debug=fast", "env.id=mymasked:MaskedChoiceDict-v0", "total_timesteps=1024"]), tmp_path)
    assert np.isfinite(result["eval/episodic_return"])


# ---------------------------------------------------------------------------- API and export


def test_predict_and_export_take_the_mask(tmp_path, userland):
    import onnxruntime as ort

    import ppo_lab
    from ppo_lab.api.export import export_onnx, export_torchscript

    train(compose_cfg(["debug=fast", "env.id=mymasked:MaskedChoice-v0", "total_timesteps=512"]), tmp_path)
    agent = ppo_lab.load(tmp_path)
    rng = np.random.default_rng(0)
    masks = (rng.random((64, 4)) < 0.5).astype(np.int8)
    masks[np.arange(64), rng.integers(0, 4, 64)] = 1
    obs = rng.random((64, 4)).astype(np.float32)
    actions, _ = agent.predict(obs, action_masks=masks)
    assert masks[np.arange(64), actions].all()
    sampled, _ = agent.predict(obs, deterministic=False, action_masks=masks)
    assert masks[np.arange(64), sampled].all()
    single, _ = agent.predict(obs[0], action_masks=masks[0])
    assert single == actions[0]

    onnx_path = export_onnx(agent, tmp_path / "p.onnx")
    session = ort.InferenceSession(str(onnx_path))
    assert [i.name for i in session.get_inputs()] == ["obs", "action_mask"]
    np.testing.assert_array_equal(session.run(None, {"obs": obs, "action_mask": masks})[0], actions)
    scripted = torch.jit.load(str(export_torchscript(agent, tmp_path / "p.pt")))
    np.testing.assert_array_equal(scripted(torch.from_numpy(obs), torch.from_numpy(masks)).numpy(), actions)
    meta = {p.key: p.value for p in __import__("onnx").load(str(onnx_path)).metadata_props}
    assert "action_mask: (B, 4) int8" in meta["ppo_lab.input"]


def test_evaluate_script_uses_the_masks(tmp_path, userland):
    from ppo_lab.commands.evaluate import evaluate_checkpoint
    from ppo_lab.config import EvaluateConfig, EvalLoggerConfig

    train(compose_cfg(["debug=fast", "env.id=mymasked:MaskedChoice-v0", "total_timesteps=256"]), tmp_path)
    summary = evaluate_checkpoint(EvaluateConfig(checkpoint=str(tmp_path), eval_episodes=2, deterministic=False,
                                                 logger=EvalLoggerConfig(kind="none"), device="cpu"))
    assert len(summary["episodes"]) == 2
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["mean_return"] == summary["mean_return"]


# ---------------------------------------------------------------------------- Taxi


def test_taxi_config_trains_with_masks_briefly(tmp_path):
    """A CI-sized run of env=taxi (the budget of test_taxi_slow.py is far larger)."""
    cfg = compose_cfg(["env=taxi", "debug=fast", "total_timesteps=1024", "eval_episodes=2"])
    assert cfg.env.id == "Taxi-v4" and cfg.agent.action_masking == ActionMasking.auto
    result = train(cfg, tmp_path)
    assert -200.0 <= result["eval/episodic_return"] <= 20.0
    import ppo_lab

    assert ppo_lab.load(tmp_path).masked


# ---------------------------------------------------------------------------- MultiBinary actions


def test_multibinary_actions_train_predict_and_export(tmp_path, userland):
    import ppo_lab
    from ppo_lab.api.export import export_torchscript

    result = train(compose_cfg(["debug=fast", "env.id=mymasked:BitMatch-v0", "total_timesteps=2048"]), tmp_path)
    assert 0.0 <= result["eval/episodic_return"] <= 8.0
    agent = ppo_lab.load(tmp_path)
    assert not agent.masked
    obs = np.random.default_rng(0).random((6, 3)).astype(np.float32)
    bits, _ = agent.predict(obs)
    assert bits.shape == (6, 3) and set(np.unique(bits)) <= {0, 1}
    scripted = torch.jit.load(str(export_torchscript(agent, tmp_path / "p.pt")))
    np.testing.assert_array_equal(scripted(torch.from_numpy(obs)).numpy(), bits)
    with pytest.raises(ValueError, match="action_masks apply to Discrete and MultiDiscrete"):
        agent.predict(obs, action_masks=np.ones(3, bool))


def test_action_space_checks_name_the_space_and_what_is_allowed():
    from ppo_lab.config import ActionType
    from ppo_lab.policies.protocol import check_action_type

    check_action_type(gym.spaces.MultiBinary(4), ActionType.discrete)
    with pytest.raises(ConfigError, match=r"MultiBinary\(\(2, 2\)\) has shape \(2, 2\).*MultiBinary with a 1-D shape"):
        check_action_type(gym.spaces.MultiBinary([2, 2]), ActionType.discrete)
    with pytest.raises(ConfigError, match=r"action=continuous does not fit.*MultiBinary\(4\); allowed: action=discrete"):
        check_action_type(gym.spaces.MultiBinary(4), ActionType.continuous)
    for space in (gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), gym.spaces.Tuple([gym.spaces.Discrete(2)])):
        with pytest.raises(ConfigError, match=r"is not supported; allowed: Discrete, MultiDiscrete or MultiBinary "
                                              r"\(action=discrete\), Box \(action=continuous\); Dict and Tuple"):
            check_action_type(space, ActionType.discrete)


def test_a_masked_run_resumes_exactly(tmp_path, userland, monkeypatch):
    """The collector's next_mask is checkpointed: a masked run interrupted by SIGTERM and resumed
    ends with the weights of the uninterrupted run, bit for bit."""
    from test_resume import steps_logged, train_until_sigterm

    from ppo_lab.io.checkpoint import load_checkpoint

    overrides = ["debug=fast", "env.id=mymasked:MaskedChoice-v0", "total_timesteps=1024", "checkpoint_interval=4"]
    full, parted = tmp_path / "full", tmp_path / "parted"
    train(compose_cfg(overrides), full)
    train_until_sigterm(monkeypatch, overrides, parted, 3 * 128)
    assert load_checkpoint(parted / "checkpoints" / "update_000003.pt")["collector"]["next_mask"].shape == (2, 4)
    train(compose_cfg(["logger=none", f"resume={parted}"]), tmp_path / "ignored")
    assert steps_logged(parted) == steps_logged(full)
    a, b = (load_checkpoint(d / "checkpoints" / "final.pt")["model"] for d in (full, parted))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_fused_and_network_policies_both_honour_the_mask():
    from ppo_lab.config import ActionType
    from ppo_lab.policies import ActorCritic
    from ppo_lab.policies.inference import FusedMLPPolicy, NetworkPolicy

    torch.manual_seed(0)
    net = ActorCritic(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(5), ActionType.discrete)
    with torch.no_grad():
        net.policy_head.weight.mul_(300.0)  # a peaked policy, so the mask must overrule it
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((500, 3)).astype(np.float32)
    mask = rng.random((500, 5)) < 0.4
    mask[np.arange(500), rng.integers(0, 5, 500)] = True
    fused, torch_path = FusedMLPPolicy(net), NetworkPolicy(net)
    for deterministic in (True, False):
        a, lp_a, _ = fused.act(obs, np.random.default_rng(1), deterministic, mask=mask)
        b, lp_b, _ = torch_path.act(obs, np.random.default_rng(1), deterministic, mask=mask)
        assert mask[np.arange(500), a].all() and mask[np.arange(500), b].all()
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(lp_a, lp_b, rtol=1e-4, atol=1e-4)
    # The rollout's log-probs are the ones the loss recomputes with the same mask (ratio 1).
    logp, _, _ = net.evaluate_actions(torch.from_numpy(obs), torch.from_numpy(a), torch.from_numpy(mask))
    np.testing.assert_allclose(lp_a, logp.detach().numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="action masks apply to Discrete and MultiDiscrete actions"):
        ActorCritic(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)), ActionType.continuous
                    ).inference_policy().act(obs[:2], rng, mask=np.ones((2, 2), bool))
