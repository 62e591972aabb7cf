"""Observation spaces beyond flat Box vectors: one-hot Discrete / MultiDiscrete, MultiBinary bits,
channels-last images, and Tuple observations (as a Dict: more in test_dict_obs.py)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import compose_cfg
from ppo_lab.commands.train import train
from ppo_lab.config import ActionType, ConfigError
from ppo_lab.io.checkpoint import load_checkpoint
from ppo_lab.policies import ActorCritic, NatureCNN
from ppo_lab.policies.encoders import Bits, OneHot, buffer_dtype, image_chw, is_channels_last, vector_encoder


def test_one_hot_of_discrete_and_multidiscrete_hand_cases():
    enc, width = vector_encoder(gym.spaces.Discrete(4, start=1))
    assert width == 4
    torch.testing.assert_close(enc(torch.tensor([1, 4])), torch.tensor([[1., 0, 0, 0], [0, 0, 0, 1]]))
    enc, width = vector_encoder(gym.spaces.MultiDiscrete([2, 3]))
    assert width == 5
    torch.testing.assert_close(enc(torch.tensor([[1, 2], [0, 0]])),
                               torch.tensor([[0., 1, 0, 0, 1], [1, 0, 1, 0, 0]]))
    assert isinstance(enc, OneHot)
    bits, width = vector_encoder(gym.spaces.MultiBinary(3))
    assert isinstance(bits, Bits) and width == 3
    torch.testing.assert_close(bits(torch.tensor([[1, 0, 1]], dtype=torch.int8)), torch.tensor([[1., 0, 1]]))


def test_buffer_keeps_pixels_as_bytes_and_indices_as_int64():
    assert buffer_dtype(gym.spaces.Box(0, 255, (3, 8, 8), np.uint8)) is np.uint8
    assert buffer_dtype(gym.spaces.Discrete(5)) is np.int64
    assert buffer_dtype(gym.spaces.MultiDiscrete([2, 2])) is np.int64
    assert buffer_dtype(gym.spaces.Box(-1, 1, (3,))) is np.float32


@pytest.mark.parametrize("shape, last, chw", [((96, 96, 3), True, (3, 96, 96)), ((84, 84, 1), True, (1, 84, 84)),
                                              ((4, 84, 84), False, (4, 84, 84)), ((3, 64, 64), False, (3, 64, 64))])
def test_image_layout_is_read_from_the_space(shape, last, chw):
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    assert is_channels_last(space) is last and image_chw(space) == chw


def test_a_channels_last_cnn_equals_the_channels_first_one_on_transposed_frames():
    torch.manual_seed(0)
    first = NatureCNN(3, (64, 64), 32)
    last = NatureCNN(3, (64, 64), 32, channels_last=True)
    last.load_state_dict(first.state_dict())
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(last(frames), first(frames.permute(0, 3, 1, 2)))


def test_discrete_observations_train_one_hot(tmp_path):
    result = train(compose_cfg(["debug=fast", "env.id=FrozenLake-v1", "total_timesteps=512"]), tmp_path)
    assert 0.0 <= result["eval/episodic_return"] <= 1.0
    model = load_checkpoint(tmp_path / "checkpoints" / "final.pt")["model"]
    assert model["actor_trunk.layers.0.weight"].shape == (64, 16)  # one-hot of 16 states


def test_a_discrete_observation_network_acts_through_its_torch_forward():
    net = ActorCritic(gym.spaces.Discrete(6), gym.spaces.Discrete(2), ActionType.discrete)
    policy = net.inference_policy()
    assert type(policy).__name__ == "NetworkPolicy"  # the numpy fast path is for Box vectors only
    action, logp, value = policy.act(np.array([0, 5]), np.random.default_rng(0), deterministic=True)
    params, v = net(torch.tensor([0, 5]))
    np.testing.assert_array_equal(action, params.argmax(-1).numpy())
    np.testing.assert_allclose(value, v.detach().numpy(), rtol=1e-6)


def test_tuple_observations_train_as_a_dict_and_flattened(tmp_path):
    """Blackjack's Tuple observation becomes a Dict of Discretes (one-hots through the combined
    extractor); FlattenObservation, the way out of old, still works too."""
    result = train(compose_cfg(["debug=fast", "env.id=Blackjack-v1", "total_timesteps=256"]), tmp_path)
    assert -1.0 <= result["eval/episodic_return"] <= 1.0
    model = load_checkpoint(tmp_path / "checkpoints" / "final.pt")["model"]
    assert model["actor_trunk.mlp.layers.0.weight"].shape == (64, 32 + 11 + 2)  # one-hots of "0", "1", "2"
    result = train(compose_cfg(["debug=fast", "env.id=Blackjack-v1", "total_timesteps=256",
                                "env.wrappers=[gymnasium.wrappers.FlattenObservation]"]), tmp_path / "flat")
    assert -1.0 <= result["eval/episodic_return"] <= 1.0


def test_channels_last_car_racing_trains_through_the_cnn(tmp_path):
    """CarRacing-v3: (96, 96, 3) RGB frames and continuous actions, no user wrapper."""
    result = train(compose_cfg(["debug=fast", "env.id=CarRacing-v3", "env.family=box2d", "network=cnn_shared",
                                "action=continuous", "agent.num_steps=16", "total_timesteps=64",
                                "agent.update_epochs=1", "eval_episodes=1", "env.max_episode_steps=20"]), tmp_path)
    assert np.isfinite(result["eval/episodic_return"])
    model = load_checkpoint(tmp_path / "checkpoints" / "final.pt")["model"]
    assert model["actor_trunk.convs.0.weight"].shape[1] == 3  # RGB channels, read from the last axis
    import ppo_lab

    agent = ppo_lab.load(tmp_path)  # the API serves the CNN policy too: raw HWC frames in
    frame = agent.make_env().reset(seed=0)[0]
    action, state = agent.predict(frame)
    assert frame.shape == (96, 96, 3) and action.shape == (3,) and state is None
    assert np.all(action >= agent.action_space.low) and np.all(action <= agent.action_space.high)
    assert agent.predict(np.stack([frame, frame]))[0].shape == (2, 3)
