"""Users' envs with invalid actions and MultiBinary actions, registered on import
(``env.id=mymasked:<EnvId>``): the action-masking and MultiBinary tests train on them."""

import gymnasium as gym
import numpy as np


class MaskedChoice(gym.Env):
    """Discrete(4) (or ``MultiDiscrete(nvec)``) actions of which a random subset is valid, drawn
    anew every step; ``info["action_mask"]`` (int8, 1 = valid; the components' masks side by side
    for MultiDiscrete) says which, and ``step`` RAISES ``ValueError`` on an invalid action.
    Observation: the mask as float32. Reward 1 when the highest valid action is taken (per
    component, averaged). 10 steps per episode.

    Attributes:
        steps_taken: actions this env accepted (the test counts them).
    """

    metadata = {"render_modes": []}

    def __init__(self, nvec=None, dict_obs: bool = False):
        self.nvec = None if nvec is None else [int(n) for n in nvec]
        widths = [4] if self.nvec is None else self.nvec
        self.width = int(sum(widths))
        self.action_space = gym.spaces.Discrete(4) if self.nvec is None else gym.spaces.MultiDiscrete(self.nvec)
        box = gym.spaces.Box(0.0, 1.0, shape=(self.width,), dtype=np.float32)
        self.dict_obs = dict_obs
        self.observation_space = (gym.spaces.Dict({"observation": box, "action_mask": gym.spaces.MultiBinary(self.width)})
                                  if dict_obs else box)
        self.t, self.steps_taken = 0, 0
        self.mask = np.ones(self.width, np.int8)

    def _parts(self, array):
        if self.nvec is None:
            return [array]
        return np.split(array, np.cumsum(self.nvec)[:-1])

    def _draw_mask(self):
        parts = []
        for n in ([4] if self.nvec is None else self.nvec):
            m = (self.np_random.random(n) < 0.5).astype(np.int8)
            m[self.np_random.integers(n)] = 1  # at least one valid choice
            parts.append(m)
        self.mask = np.concatenate(parts)

    def _out(self):
        obs = self.mask.astype(np.float32)
        info = {"action_mask": self.mask.copy()}
        if self.dict_obs:
            return {"observation": obs, "action_mask": self.mask.copy()}, {}
        return obs, info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._draw_mask()
        return self._out()

    def step(self, action):
        choices = [int(action)] if self.nvec is None else [int(a) for a in np.asarray(action).reshape(-1)]
        reward = 0.0
        for choice, m in zip(choices, self._parts(self.mask)):
            if not m[choice]:
                raise ValueError(f"invalid action {choice}: mask {self.mask.tolist()}")
            reward += float(choice == np.flatnonzero(m).max()) / len(choices)
        self.steps_taken += 1
        self.t += 1
        self._draw_mask()
        obs, info = self._out()
        return obs, reward, self.t >= 10, False, info


class BitMatch(gym.Env):
    """MultiBinary(3) actions: the observation is 3 random bits (float32); the reward is the
    fraction of action bits equal to them. 8 steps per episode."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.MultiBinary(3)
        self.t, self.bits = 0, np.zeros(3, np.int8)

    def _obs(self):
        self.bits = self.np_random.integers(0, 2, 3).astype(np.int8)
        return self.bits.astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        action = np.asarray(action).reshape(-1)
        assert self.action_space.contains(action.astype(np.int8)), action
        reward = float(np.mean(action == self.bits))
        self.t += 1
        return self._obs(), reward, self.t >= 8, False, {}


gym.register(id="MaskedChoice-v0", entry_point=MaskedChoice)
gym.register(id="MaskedChoiceMD-v0", entry_point=MaskedChoice, kwargs={"nvec": [3, 2]})
gym.register(id="MaskedChoiceDict-v0", entry_point=MaskedChoice, kwargs={"dict_obs": True})
gym.register(id="BitMatch-v0", entry_point=BitMatch)
