"""ppo_lab: Hydra-configured Proximal Policy Optimization experiments, logged to W&B."""

__version__ = "0.1.0"
