"""Dict and Tuple observations: the combined extractor (hand-checked), Tuple -> Dict, env.obs_keys,
the refusals before training (an entry without an encoder, normalize_obs, network.kind=cnn), the
rollout buffer's per-entry storage, and MiniGrid DoorKey trained, loaded and served end to end."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import compose_cfg
from ppo_lab.commands.train import train
from ppo_lab.config import ActionType, ConfigError, EnvConfig
from ppo_lab.envs import make_env, make_vec_env
from ppo_lab.io.checkpoint import load_checkpoint
from ppo_lab.policies import ActorCritic, NatureCNN
from ppo_lab.policies.extractors import CombinedExtractor, SmallCNN
from ppo_lab.policies.observations import flatten_obs, index_obs, obs_to_tensor, split_obs
from ppo_lab.training.rollout import RolloutBuffer, RolloutCollector

DOORKEY = ["env=minigrid_doorkey", "debug=fast"]


def test_extractor_concatenates_entries_in_sorted_key_order_hand_case():
    space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "dir": gym.spaces.Discrete(3),
                             "bits": gym.spaces.MultiBinary(2), "action_mask": gym.spaces.MultiBinary(5)})
    extractor = CombinedExtractor(space)
    assert extractor.keys == ["bits", "dir", "pos"] and extractor.features_dim == 2 + 3 + 2  # no action_mask
    obs = {"pos": torch.tensor([[0.5, -0.25], [1.0, 0.0]]), "dir": torch.tensor([2, 0]),
           "bits": torch.tensor([[1, 0], [0, 1]], dtype=torch.int8), "action_mask": torch.ones(2, 5)}
    torch.testing.assert_close(extractor(obs), torch.tensor([[1., 0, 0, 0, 1, 0.5, -0.25],
                                                             [0., 1, 1, 0, 0, 1.0, 0.0]]))


def test_image_entries_get_a_cnn_sized_to_them():
    small = CombinedExtractor(gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)}))
    assert isinstance(small.encoders["image"], SmallCNN) and small.features_dim == 64 * 4 * 4  # MiniGrid's view
    big = CombinedExtractor(gym.spaces.Dict({"frame": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)}))
    assert isinstance(big.encoders["frame"], NatureCNN) and big.features_dim == 256
    net = ActorCritic(gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
                                       "direction": gym.spaces.Discrete(4)}),
                      gym.spaces.Discrete(7), ActionType.discrete, shared=False)
    assert net.actor_trunk.extractor is not net.critic_trunk.extractor  # separate actor and critic
    assert type(net.inference_policy()).__name__ == "NetworkPolicy"  # the numpy fast path is Box-only
    logits, value = net({"image": torch.zeros(3, 7, 7, 3, dtype=torch.uint8), "direction": torch.tensor([0, 1, 3])})
    assert logits.shape == (3, 7) and value.shape == (3,)


def test_tuple_observations_become_a_dict_keyed_by_position():
    env = make_env(EnvConfig(id="Blackjack-v1"))
    assert env.observation_space == gym.spaces.Dict(
        {"0": gym.spaces.Discrete(32), "1": gym.spaces.Discrete(11), "2": gym.spaces.Discrete(2)})
    obs, _ = env.reset(seed=0)
    assert sorted(obs) == ["0", "1", "2"] and env.observation_space.contains(obs)
    env.close()


def test_an_entry_without_an_encoder_is_refused_before_training_naming_it_and_the_way_out(tmp_path):
    with pytest.raises(ConfigError, match=r"entry 'mission' \(MissionSpace.*cannot be encoded.*"
                                          r"env\.obs_keys=\[direction,image\].*env\.wrappers"):
        train(compose_cfg(DOORKEY + ["env.obs_keys=null"]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_obs_keys_refuses_an_unknown_key_naming_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"env.obs_keys: 'colour' is not an entry.*available keys: "
                                          r"direction, image, mission"):
        train(compose_cfg(DOORKEY + ["env.obs_keys=[image,colour]"]), tmp_path)
    with pytest.raises(ConfigError, match=r"env.obs_keys=\['x'\] selects entries of a Dict.*Box"):
        train(compose_cfg(["debug=fast", "env.obs_keys=[x]"]), tmp_path)  # CartPole
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override, match", [
    ("env.normalize_obs=true", r"env.normalize_obs=true is not supported on Dict observations"),
    ("network=cnn_shared", r"network.kind=cnn reads one image observation.*network=mlp_shared.*\(image\)"),
])
def test_dict_observations_refuse_what_they_do_not_support(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        train(compose_cfg(DOORKEY + [override]), tmp_path)


def test_the_buffer_stores_each_entry_with_its_own_dtype_and_minibatches_index_them():
    cfg = compose_cfg(DOORKEY)
    envs = make_vec_env(EnvConfig(id=cfg.env.id, family=cfg.env.family, obs_keys=list(cfg.env.obs_keys)), 2)
    try:
        buf = RolloutBuffer.allocate(8, envs)
        assert set(buf.obs) == {"direction", "image"}
        assert buf.obs["image"].dtype == np.uint8 and buf.obs["image"].shape == (8, 2, 7, 7, 3)
        assert buf.obs["direction"].dtype == np.int64 and buf.obs["direction"].shape == (8, 2)
        net = ActorCritic(envs.single_observation_space, envs.single_action_space, ActionType.discrete)
        collector = RolloutCollector(envs, 8, seed=0)
        buf, _ = collector.collect(net)
        assert buf.obs["image"].max() > 0  # the frames were written
        batch = buf.training_batch(np.zeros((8, 2), np.float32), np.zeros((8, 2), np.float32), torch.device("cpu"))
        assert batch.obs["image"].dtype == torch.uint8 and batch.obs["image"].shape == (16, 7, 7, 3)
        assert batch.obs["direction"].dtype == torch.int64
        parts = [index_obs(batch.obs, rows) for rows in batch.minibatch_indices(2)]
        assert sum(len(obs["direction"]) for obs in parts) == len(batch.valid)
        assert all(obs["image"].shape == (len(obs["direction"]), 7, 7, 3) for obs in parts)
        state = collector.state_dict()  # the collector's checkpoint holds the Dict observation too
        collector.load_state_dict(state)
        np.testing.assert_array_equal(collector.next_obs["image"], state["next_obs"]["image"].numpy())
    finally:
        envs.close()


def test_tree_helpers_on_arrays_and_dicts():
    tree = {"a": np.arange(12).reshape(3, 2, 2), "b": np.zeros((3, 2), np.float64)}
    flat = flatten_obs(tree)
    assert flat["a"].shape == (6, 2) and flat["b"].shape == (6,)
    np.testing.assert_array_equal(index_obs(flat, np.array([5, 0]))["a"], [[10, 11], [0, 1]])
    tensors = obs_to_tensor(flat, "cpu")
    assert tensors["a"].dtype == torch.int64 and tensors["b"].dtype == torch.float32
    parts = split_obs(tensors, 4)
    assert [len(p["a"]) for p in parts] == [2, 2, 1, 1]
    assert flatten_obs(np.zeros((3, 2, 4))).shape == (6, 4)  # the Box path: the same call, one array
    assert [len(p) for p in split_obs(torch.zeros(5, 2), 2)] == [3, 2]


@pytest.fixture(scope="module")
def doorkey_run(tmp_path_factory):
    """A short MiniGrid DoorKey-5x5 run on Dict observations (2048 env steps, ~5 s)."""
    run_dir = tmp_path_factory.mktemp("doorkey")
    result = train(compose_cfg(DOORKEY), run_dir)
    return run_dir, result


def test_minigrid_doorkey_trains_on_dict_observations(doorkey_run):
    run_dir, result = doorkey_run
    assert 0.0 <= result["eval/episodic_return"] <= 1.0
    model = load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"]
    assert model["actor_trunk.extractor.encoders.image.convs.0.weight"].shape == (16, 3, 2, 2)  # object, colour, state
    assert model["actor_trunk.mlp.layers.0.weight"].shape == (64, 1024 + 4)  # CNN features + one-hot direction


def test_a_loaded_dict_agent_predicts_on_one_and_on_a_batch_of_dict_observations(doorkey_run):
    import ppo_lab
    from ppo_lab.api.export import DeterministicPolicy

    agent = ppo_lab.load(doorkey_run[0])
    obs, _ = agent.make_env().reset(seed=0)
    assert sorted(obs) == ["direction", "image"]
    action, state = agent.predict(obs)
    assert action.shape == () and state is None and agent.action_space.contains(int(action))
    batch = {key: np.stack([value, value]) for key, value in obs.items()}
    np.testing.assert_array_equal(agent.predict(batch)[0], [action, action])
    with pytest.raises(ValueError, match=r"obs must be a dict with keys \['direction', 'image'\]"):
        agent.predict(obs["image"])
    with pytest.raises(ConfigError, match=r"observation space Dict\(.*is not a Box"):
        DeterministicPolicy(agent)  # export: one Box input only
