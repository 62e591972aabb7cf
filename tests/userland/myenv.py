"""A user's own env, registered with gymnasium when the module is imported.

``python train.py env.id=myenv:MyCorridor-v0`` imports this module (as ``gymnasium.make`` does
for ``module:EnvId``) and trains on the id it registers.
"""

import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """A 1-D corridor of ``length`` cells: start at cell 0, action 1 steps right, 0 steps left
    (a wall at 0); reaching the last cell ends the episode with reward 1. Observation: the
    position scaled to [0, 1]. Episodes are capped at 20 steps (the registered limit)."""

    metadata = {"render_modes": []}

    def __init__(self, length: int = 6):
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.pos = 0

    def _obs(self):
        return np.array([self.pos / (self.length - 1)], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = max(0, self.pos + (1 if int(action) == 1 else -1))
        at_goal = self.pos >= self.length - 1
        return self._obs(), float(at_goal), at_goal, False, {}


gym.register(id="MyCorridor-v0", entry_point=Corridor, max_episode_steps=20)
