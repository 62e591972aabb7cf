"""Every config combination composes and validates; env configs pull in their defaults; the
command line wins; aliases work."""

import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg
from ppo_lab.config import ActionType, ConfigError, TrainConfig, to_typed


def group(name):
    return sorted(p.stem for p in (CONF / name).glob("*.yaml"))


def test_groups_exist():
    assert {"cartpole", "lunarlander", "pendulum"} <= set(group("env"))
    assert {"classic", "atari", "mujoco"} <= set(group("agent"))
    assert {"mlp_shared", "mlp_separate", "cnn_shared", "cnn_separate"} <= set(group("network"))
    assert {"discrete", "continuous"} == set(group("action"))
    assert {"wandb", "none"} <= set(group("logger"))


def is_recurrent(network):
    return OmegaConf.load(CONF / "network" / f"{network}.yaml").get("core", "none") != "none"


def combinations(env):
    """Every network (with every action type on CartPole, where the product is exhaustive), every
    agent preset, and (on CartPole) every logger, for one env."""
    actions = group("action") if env == "cartpole" else [None]
    for network, action in itertools.product(group("network"), actions):
        # A recurrent network's minibatches split envs: presets with more minibatches than envs
        # are refused (test_recurrent.py), so these combinations take one minibatch.
        yield ([f"env={env}", f"network={network}"] + ([f"action={action}"] if action else [])
               + (["agent.num_minibatches=1"] if is_recurrent(network) else []))
    env_network = next((d["override /network"] for d in OmegaConf.to_container(OmegaConf.load(CONF / "env" / f"{env}.yaml")).get("defaults", [])
                        if isinstance(d, dict) and "override /network" in d), "mlp_separate")
    for agent in group("agent"):
        yield [f"env={env}", f"agent={agent}"] + (["agent.num_minibatches=1"] if is_recurrent(env_network) else [])
    for logger in group("logger") if env == "cartpole" else []:
        yield [f"env={env}", f"logger={logger}"]


@pytest.mark.parametrize("env", group("env"))
def test_every_combination_composes(env):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # one Hydra context for all
        for overrides in combinations(env):
            typed = to_typed(compose("train", overrides=overrides))
            assert isinstance(typed, TrainConfig)
            chosen = dict(o.split("=") for o in overrides if not o.startswith("agent."))
            if "network" in chosen:
                assert typed.network.kind == OmegaConf.load(CONF / "network" / f"{chosen['network']}.yaml").kind
            if "action" in chosen:
                assert typed.action.type.value == chosen["action"]


@pytest.mark.parametrize("experiment", group("experiment") + [None])
def test_experiments_and_debug_compose(experiment):
    overrides = ["debug=fast"] + ([f"experiment={experiment}"] if experiment else [])
    to_typed(compose_cfg(overrides))


def test_default_is_cartpole_with_classic_preset():
    typed = to_typed(compose_cfg())
    assert typed.env.id == "CartPole-v1"
    assert typed.action.type is ActionType.discrete
    assert (typed.agent.num_envs, typed.agent.num_steps, typed.agent.update_epochs) == (8, 32, 20)
    assert list(typed.logger) == ["wandb"] and typed.logger["wandb"]["_target_"] == "ppo_lab.io.sinks.WandbSink"


def test_env_pulls_in_its_preset_network_and_action():
    pend = to_typed(compose_cfg(["env=pendulum"]))
    assert pend.action.type is ActionType.continuous
    assert pend.env.normalize_obs and pend.env.normalize_reward
    lunar = to_typed(compose_cfg(["env=lunarlander"]))
    assert lunar.env.family == "box2d"
    assert lunar.agent.num_envs == 16 and lunar.agent.gamma == 0.999


def test_command_line_wins_over_env_defaults():
    typed = to_typed(compose_cfg(["env=lunarlander", "agent.gamma=0.9", "network=mlp_shared", "agent.num_envs=4"]))
    assert typed.agent.gamma == 0.9
    assert typed.network.shared is True
    assert typed.agent.num_envs == 4
    typed = to_typed(compose_cfg(["env=cartpole", "agent=atari"]))
    assert typed.agent.clip_coef == 0.1  # the atari preset chosen on the command line
    # A preset chosen on the command line wins whole, even over an env with its own preset.
    atari = to_typed(compose_cfg(["env=lunarlander", "agent=atari"])).agent
    assert (atari.num_envs, atari.num_steps, atari.gamma, atari.clip_coef) == (8, 128, 0.99, 0.1)


def test_clip_alias_sets_clip_coef():
    typed = to_typed(compose_cfg(["env=lunarlander", "agent.clip=0.1"]))
    assert typed.agent.clip_coef == 0.1
    assert typed.agent.clip is None
    assert to_typed(compose_cfg(["agent.lr=0.003"])).agent.learning_rate == 0.003


def test_derived_sizes_are_properties():
    typed = to_typed(compose_cfg(["agent.num_envs=4", "agent.num_steps=128", "agent.num_minibatches=4"]))
    assert typed.agent.batch_size == 512 and typed.agent.minibatch_size == 128


@pytest.mark.parametrize(
    "override, message",
    [
        ("agent.clip_coef=0", "agent.clip_coef=0.0 is not allowed: must be > 0"),
        ("agent.clip=-0.1", "agent.clip_coef=-0.1 is not allowed: must be > 0"),
        ("agent.num_minibatches=7", "agent.num_minibatches=7 does not divide batch_size=256 "
                                    r"\(agent.num_envs=8 x agent.num_steps=32\)"),
        ("agent.gamma=1.5", "agent.gamma=1.5 is not allowed: must be in"),
        ("total_timesteps=10", "total_timesteps=10 is smaller than one rollout"),
        ("device=tpu", "device='tpu' is not allowed: one of auto, cpu, cuda"),
        ("network.activation=gelu", "network.activation='gelu' is not allowed"),
        ("action.log_std_init=3", "action.log_std_init=3.0 is not allowed: must lie inside the log std clamp"),
        ("agent.num_steps=1", "agent.num_steps=1 is not allowed: must be >= 2"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        to_typed(compose_cfg([override]))


def test_wrong_type_is_rejected_at_composition():
    with pytest.raises(Exception, match="agent.num_envs"):
        to_typed(compose_cfg(["agent.num_envs=many"]))


def test_env_budget_applies_unless_given_on_command_line():
    assert to_typed(compose_cfg(["env=acrobot"])).total_timesteps == 500_000
    assert to_typed(compose_cfg(["env=halfcheetah"])).total_timesteps == 1_000_000
    assert to_typed(compose_cfg(["env=acrobot", "total_timesteps=5000"])).total_timesteps == 5000
    assert to_typed(compose_cfg(["env=acrobot", "debug=fast"])).total_timesteps == 2048
