"""The Python API: load a trained agent, act and evaluate with it, or train from Python."""

from ppo_lab.api.agent import Agent, load
from ppo_lab.api.train import train

__all__ = ["Agent", "load", "train"]
