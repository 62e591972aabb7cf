"""Network construction: init gains, shared vs separate gradients, space checks."""

import math
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from ppo_lab.config import ActionType, ConfigError
from ppo_lab.policies import ActorCritic

OBS = gym.spaces.Box(-1, 1, (4,), np.float32)
DISCRETE = gym.spaces.Discrete(3)
BOX = gym.spaces.Box(-2, 2, (2,), np.float32)


def test_orthogonal_init_gains_and_zero_bias():
    torch.manual_seed(0)
    net = ActorCritic(OBS, DISCRETE, ActionType.discrete, hidden_sizes=(64, 64))
    # A (semi-)orthogonal matrix scaled by g has W W^T = g^2 I (or W^T W, whichever is smaller).
    hidden = net.actor_trunk.layers[1]  # Linear(64, 64)
    first = net.actor_trunk.layers[0]  # Linear(4, 64)
    for layer, gain in ((net.policy_head, 0.01), (net.value_head, 1.0), (hidden, math.sqrt(2)), (first, math.sqrt(2))):
        w = layer.weight.detach()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-5, rtol=1e-4)
        assert torch.count_nonzero(layer.bias) == 0


def test_initial_policy_is_near_uniform():
    net = ActorCritic(OBS, DISCRETE, ActionType.discrete)
    logits, _ = net(torch.randn(16, 4))
    assert logits.abs().max() < 0.1  # 0.01-gain head -> nearly equal action probabilities


def test_separate_networks_value_loss_does_not_reach_actor():
    net = ActorCritic(OBS, DISCRETE, ActionType.discrete, shared=False)
    _, value = net(torch.randn(8, 4))
    value.pow(2).mean().backward()
    actor_grads = [p.grad for p in list(net.actor_trunk.parameters()) + list(net.policy_head.parameters())]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in actor_grads)
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in net.critic_trunk.parameters())


def test_shared_trunk_value_loss_reaches_trunk():
    net = ActorCritic(OBS, DISCRETE, ActionType.discrete, shared=True)
    assert net.actor_trunk is net.critic_trunk
    _, value = net(torch.randn(8, 4))
    value.pow(2).mean().backward()
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in net.actor_trunk.parameters())


def test_continuous_state_independent_log_std():
    net = ActorCritic(OBS, BOX, ActionType.continuous, log_std_init=-0.5)
    torch.testing.assert_close(net.log_std.detach(), torch.full((2,), -0.5))
    policy = net.inference_policy()
    action, logp, value = policy.act(np.random.randn(5, 4), np.random.default_rng(0))
    assert action.shape == (5, 2) and logp.shape == (5,) and value.shape == (5,)
    mean, _ = net(torch.zeros(1, 4))
    det, _, _ = policy.act(np.zeros((1, 4)), np.random.default_rng(0), deterministic=True)
    np.testing.assert_allclose(det, mean.detach().numpy(), atol=1e-6)


def test_action_type_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="action=continuous does not fit .* allowed: action=discrete"):
        ActorCritic(OBS, DISCRETE, ActionType.continuous)
    with pytest.raises(ConfigError, match="action=discrete does not fit .* allowed: action=continuous"):
        ActorCritic(OBS, BOX, ActionType.discrete)


def test_cnn_on_vector_obs_is_a_config_error():
    with pytest.raises(ConfigError, match="network.kind=cnn needs image observations"):
        ActorCritic(OBS, DISCRETE, ActionType.discrete, kind="cnn", hidden_sizes=(512,))


def test_cnn_takes_uint8_frames_and_scales_them():
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    net = ActorCritic(space, gym.spaces.Discrete(4), ActionType.discrete, kind="cnn", shared=True,
                      hidden_sizes=(512,), activation="relu")
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    logits, value = net(obs)
    assert logits.shape == (2, 4) and value.shape == (2,)
    # Scaling by 1/255 happens inside: feeding obs/255 as floats *255 gives the same output.
    logits2, _ = net(obs.float())
    torch.testing.assert_close(logits, logits2)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("space, action_type", [
    (DISCRETE, ActionType.discrete),
    (gym.spaces.MultiDiscrete([3, 2]), ActionType.discrete),
    (BOX, ActionType.continuous),
])
def test_fused_inference_policy_matches_the_network(shared, space, action_type):
    """The rollout's fused numpy actor+critic snapshot gives the network's outputs, and the
    log-probs it returns for its samples are the ones training recomputes (ratio 1)."""
    from ppo_lab.policies import FusedMLPPolicy

    torch.manual_seed(0)
    net = ActorCritic(OBS, space, action_type, shared=shared, hidden_sizes=(64, 32), log_std_init=-0.3)
    with torch.no_grad():  # non-zero biases and a non-trivial head, so every block is checked
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    policy = net.inference_policy()
    assert isinstance(policy, FusedMLPPolicy)
    obs = np.random.default_rng(0).normal(size=(7, 4))  # float64, as MuJoCo returns
    t_obs = torch.from_numpy(obs).float()
    with torch.no_grad():
        params, value = net(t_obs)
    fused_params, fused_value = policy(obs)
    assert fused_params.dtype == np.float32 and fused_value.shape == (7,)
    np.testing.assert_allclose(fused_params, params.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused_value, value.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(policy.value(obs), value.numpy(), rtol=1e-5, atol=1e-6)
    for deterministic in (False, True):
        action, logp, act_value = policy.act(obs, np.random.default_rng(1), deterministic)
        with torch.no_grad():
            train_logp, _, _ = net.evaluate_actions(t_obs, torch.from_numpy(action))
        np.testing.assert_allclose(logp, train_logp.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(act_value, value.numpy(), rtol=1e-5, atol=1e-6)
    mode, _, _ = policy.act(obs, np.random.default_rng(1), deterministic=True)
    expected_mode = params if action_type is ActionType.continuous else params.argmax(-1)
    if isinstance(space, gym.spaces.MultiDiscrete):
        expected_mode = torch.stack([params[:, :3].argmax(-1), params[:, 3:].argmax(-1)], -1)
    np.testing.assert_allclose(mode, expected_mode.numpy(), atol=1e-6)


def test_fused_policy_is_a_snapshot_of_the_weights():
    net = ActorCritic(OBS, DISCRETE, ActionType.discrete)
    policy = net.inference_policy()
    obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    before = policy(obs)[1].copy()
    with torch.no_grad():
        net.value_head.bias.add_(1.0)
    np.testing.assert_allclose(policy(obs)[1], before)  # frozen: take a new one per rollout
    np.testing.assert_allclose(net.inference_policy()(obs)[1], before + 1.0, rtol=1e-6)


def test_relu_mlp_snapshot_matches_the_network():
    net = ActorCritic(OBS, DISCRETE, ActionType.discrete, activation="relu")
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        logits, value = net(torch.from_numpy(obs))
    fused_logits, fused_value = net.inference_policy()(obs)
    np.testing.assert_allclose(fused_logits, logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused_value, value.numpy(), rtol=1e-5, atol=1e-6)


def test_cnn_acts_through_the_network_itself():
    from ppo_lab.policies import NetworkPolicy

    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    net = ActorCritic(frames, DISCRETE, ActionType.discrete, kind="cnn", hidden_sizes=(512,))
    policy = net.inference_policy()
    assert isinstance(policy, NetworkPolicy)
    obs = np.random.default_rng(0).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    with torch.no_grad():
        logits, value = net(torch.from_numpy(obs))
    got_logits, got_value = policy(obs)
    np.testing.assert_allclose(got_logits, logits.numpy(), rtol=1e-5, atol=1e-6)
    action, _, _ = policy.act(obs, np.random.default_rng(0), deterministic=True)
    np.testing.assert_array_equal(action, logits.argmax(-1).numpy())


def test_mlp_reads_integer_observations_as_their_float_values():
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (6,), np.uint8)  # byte features (e.g. Atari RAM), not an image
    net = ActorCritic(space, DISCRETE, ActionType.discrete)
    obs = torch.tensor([[0, 1, 2, 128, 254, 255], [7, 7, 7, 7, 7, 7]], dtype=torch.uint8)
    logp, ent, value = net.evaluate_actions(obs, torch.tensor([0, 2]))
    ref_logp, ref_ent, ref_value = net.evaluate_actions(obs.float(), torch.tensor([0, 2]))
    torch.testing.assert_close((logp, ent, value), (ref_logp, ref_ent, ref_value))
    _, np_value = net.inference_policy()(obs.numpy())  # the rollout's numpy path agrees
    np.testing.assert_allclose(np_value, ref_value.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("space, shown", [
    (gym.spaces.Box(-1, 1, (2, 3), np.float32), "has shape (2, 3); allowed: a 1-D Box"),
    (gym.spaces.MultiDiscrete([[2, 3], [4, 5]]), "has nvec of shape (2, 2); allowed: Discrete, MultiDiscrete with a 1-D nvec"),
])
def test_multi_dimensional_action_spaces_are_refused_with_what_is_allowed(space, shown):
    action_type = ActionType.continuous if isinstance(space, gym.spaces.Box) else ActionType.discrete
    with pytest.raises(ConfigError, match=re.escape(shown)):
        ActorCritic(OBS, space, action_type)
