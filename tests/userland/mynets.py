"""A user's actor-critic: ``network._target_=mynets.MyNet +network.width=16``.

The protocol is ppo_lab/policies/protocol.py; subclassing ActorCriticBase leaves only
``__init__`` and ``forward`` to write.
"""

import numpy as np
import torch
from torch import nn

from ppo_lab.policies import ActorCriticBase


class MyNet(ActorCriticBase):
    """One shared tanh layer of ``width`` units, a policy head and a value head."""

    def __init__(self, observation_space, action_space, action_type, log_std_init=0.0, width: int = 32):
        super().__init__(observation_space, action_space, action_type, log_std_init)
        obs_dim = int(np.prod(observation_space.shape))
        self.body = nn.Sequential(nn.Linear(obs_dim, width), nn.Tanh())
        self.pi = nn.Linear(width, self.action_dim)  # action_dim: set by the base class
        self.v = nn.Linear(width, 1)

    def forward(self, obs):
        h = self.body(obs.float().flatten(1))
        return self.pi(h), self.v(h).squeeze(-1)  # logits (B, n), value (B,)


class BrokenNet(nn.Module):
    """A plain torch module: no evaluate_actions, inference_policy, ... (refused before training)."""

    def __init__(self, observation_space, action_space, action_type, log_std_init=0.0):
        super().__init__()
        self.lin = nn.Linear(int(np.prod(observation_space.shape)), int(action_space.n))

    def forward(self, obs):
        return self.lin(obs.float()), torch.zeros(obs.shape[0])
