"""Building the run's network from its config node (Hydra instantiates ``network._target_``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ppo_lab.config import NetworkConfig, TrainConfig
from ppo_lab.config.validation import user_network_node
from ppo_lab.config.targets import instantiate_node
from ppo_lab.policies.actor_critic import check_network_fits
from ppo_lab.policies.protocol import check_action_type, check_network


def network_node(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.network`` as a plain ``_target_`` dict."""
    if isinstance(cfg.network, NetworkConfig):
        return dataclasses.asdict(cfg.network)
    return user_network_node(cfg.network)


def build_network(cfg: TrainConfig, envs: Any, device: torch.device) -> nn.Module:
    """Instantiate ``cfg.network`` for the spaces of ``envs`` (a vector env's ``single_*``
    spaces) and move it to ``device``.

    Raises:
        ConfigError: the action type or network kind does not fit the env, the target cannot be
            built, or the network does not meet the protocol (``policies/protocol.py``).
    """
    check_action_type(envs.single_action_space, cfg.action.type)
    if isinstance(cfg.network, NetworkConfig):
        check_network_fits(envs.single_observation_space, cfg.network.kind)
    node = network_node(cfg)
    network = instantiate_node(
        "network", node,
        observation_space=envs.single_observation_space,
        action_space=envs.single_action_space,
        action_type=cfg.action.type,
        log_std_init=cfg.action.log_std_init,
    )
    check_network(network, node["_target_"])
    return network.to(device)
