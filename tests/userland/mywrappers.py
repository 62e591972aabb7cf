"""A user's gymnasium wrapper: ``'env.wrappers=[mywrappers.ScaleObservation]'`` or, with a
kwarg, ``'env.wrappers=[{_target_: mywrappers.ScaleObservation, factor: 3.0}]'``.

gymnasium's own wrappers go by dotted path too: ``'env.wrappers=[gymnasium.wrappers.TimeAwareObservation]'``.
"""

import json
import os

import gymnasium as gym
import numpy as np


class ScaleObservation(gym.ObservationWrapper):
    """Multiply Box observations by ``factor``.

    When ``$USERLAND_LOG`` names a dir, every ``reset`` appends ``{"factor", "seed"}`` to
    ``<dir>/wrapper_resets.jsonl``: the seeds tell training envs (``seed + i``) from evaluation
    envs (``eval_seed + k``), so a test can see that both were wrapped.
    """

    def __init__(self, env: gym.Env, factor: float = 2.0):
        super().__init__(env)
        self.factor = float(factor)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low * self.factor, space.high * self.factor,
                                                shape=space.shape, dtype=space.dtype)

    def observation(self, observation):
        return (np.asarray(observation) * self.factor).astype(self.observation_space.dtype)

    def reset(self, *, seed=None, options=None):
        log_dir = os.environ.get("USERLAND_LOG")
        if log_dir:
            with open(os.path.join(log_dir, "wrapper_resets.jsonl"), "a") as f:
                f.write(json.dumps({"factor": self.factor, "seed": seed}) + "\n")
        return super().reset(seed=seed, options=options)
