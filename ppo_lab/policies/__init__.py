"""Policies: layers (MLP, Nature CNN), the combined extractor of Dict observations, action
distributions, the actor-critic and its protocol, the numpy acting policies, observation-tree
helpers, and the factory that builds the configured network."""

from ppo_lab.policies.actor_critic import ActorCritic, check_network_fits
from ppo_lab.policies.distributions import LOG_STD_MAX, LOG_STD_MIN
from ppo_lab.policies.extractors import CombinedExtractor
from ppo_lab.policies.factory import build_network
from ppo_lab.policies.inference import FusedMLPPolicy, InferencePolicy, NetworkPolicy, obs_to_tensor
from ppo_lab.policies.layers import MLP, NatureCNN, layer_init
from ppo_lab.policies.protocol import ActorCriticBase, check_action_type, check_network

__all__ = [
    "LOG_STD_MAX", "LOG_STD_MIN", "ActorCritic", "ActorCriticBase", "CombinedExtractor", "FusedMLPPolicy",
    "InferencePolicy", "MLP", "NatureCNN", "NetworkPolicy", "build_network", "check_action_type",
    "check_network", "check_network_fits", "layer_init", "obs_to_tensor",
]
