"""Observation and reward normalization (37 details, continuous details 6-9): ``NormalizeVector``
equals gymnasium's vector ``NormalizeObservation`` + clip and ``NormalizeReward`` + clip bitwise,
alone and with its state shared across a population (``share_normalization``)."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import vector as vw

from ppo_lab.envs.normalization import (
    NormalizeVector,
    load_normalization_state,
    normalization_state,
    share_normalization,
    step_vector_envs,
)


class Drifting(gym.Env):
    """Observations and rewards with drifting scale; episodes end at random (terminated) or
    after 40 steps (truncated), so envs of a vector env end at different steps."""

    def __init__(self, dtype=np.float64, shape=(3,)):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape, dtype)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.dtype = dtype

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        scale = 1.0 + 0.1 * self.t
        return (self.np_random.normal(3.0, scale, self.observation_space.shape)).astype(self.dtype)

    def step(self, action):
        self.t += 1
        reward = float(self.np_random.normal(5.0 * float(action[0]), 2.0))
        terminated = bool(self.np_random.random() < 0.04)
        return self._obs(), reward, terminated, self.t >= 40, {}


def vector(num_envs, dtype=np.float64):
    return gym.vector.SyncVectorEnv([lambda: Drifting(dtype) for _ in range(num_envs)])


def gymnasium_stack(envs, gamma, clip_obs=5.0, clip_reward=3.0):
    """The reference: gymnasium's wrappers, as make_vec_env stacked them before NormalizeVector."""
    envs = vw.NormalizeObservation(envs)
    envs = vw.TransformObservation(envs, lambda obs: np.clip(obs, -clip_obs, clip_obs))
    envs = vw.NormalizeReward(envs, gamma=gamma)
    return vw.TransformReward(envs, lambda r: np.clip(r, -clip_reward, clip_reward))


def ours(envs, gamma, clip_obs=5.0, clip_reward=3.0):
    return NormalizeVector(envs, True, clip_obs, True, clip_reward, gamma)


def assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def actions_for(seed, steps, num_envs):
    return np.random.default_rng(seed).uniform(-1, 1, (steps, num_envs, 1)).astype(np.float32)


@pytest.mark.parametrize("num_envs,dtype", [(1, np.float64), (3, np.float64), (16, np.float64), (4, np.float32)])
def test_normalize_vector_equals_gymnasiums_wrappers_bitwise(num_envs, dtype):
    """Same observations, rewards (values and dtypes) and statistics as gymnasium's four wrappers
    over 300 steps with episodes ending at different steps (partial active masks of the return
    update) and 16 envs (numpy's pairwise sums): catches any reordering of the arithmetic."""
    ref, mine = gymnasium_stack(vector(num_envs, dtype), 0.9), ours(vector(num_envs, dtype), 0.9)
    assert mine.single_observation_space == ref.single_observation_space
    assert_same(mine.reset(seed=3)[0], ref.reset(seed=3)[0])
    actions = actions_for(0, 300, num_envs)
    for a in actions:
        o1, r1, te1, tr1, _ = ref.step(a)
        o2, r2, te2, tr2, _ = mine.step(a)
        assert_same(o2, o1)
        assert_same(r2, r1)
        assert_same(te2, te1) and assert_same(tr2, tr1)
    obs_rms, ret_rms = ref.env.env.env.obs_rms, ref.env.return_rms
    state = normalization_state(mine)
    np.testing.assert_array_equal(state["obs"]["mean"], obs_rms.mean)
    np.testing.assert_array_equal(state["obs"]["var"], obs_rms.var)
    assert state["obs"]["count"] == obs_rms.count
    np.testing.assert_array_equal(state["reward"]["var"], ret_rms.var)
    assert state["reward"]["count"] == ret_rms.count
    assert_same(mine.accumulated_reward, ref.env.accumulated_reward)


def test_members_sharing_one_store_each_equal_their_own_gymnasium_stack():
    """Three members (own seeds, own gamma) normalized together by step_vector_envs: each gets
    bitwise what its own gymnasium stack gives. Catches rows mixed up, statistics pooled across
    members, or a member's gamma applied to another."""
    gammas, seeds, num_envs = [0.9, 0.99, 0.5], [1, 2, 3], 5
    refs = [gymnasium_stack(vector(num_envs), g) for g in gammas]
    mine = [ours(vector(num_envs), g) for g in gammas]
    for ref, env, seed in zip(refs, mine, seeds):
        assert_same(env.reset(seed=seed)[0], ref.reset(seed=seed)[0])
    store = share_normalization(mine)
    assert store is not None and store.rows == 3 and all(env.store is store for env in mine)
    for t in range(200):
        acts = [actions_for(seed, 200, num_envs)[t] for seed in seeds]
        outs = step_vector_envs(mine, acts)
        for ref, a, out in zip(refs, acts, outs):
            o, r, *_ = ref.step(a)
            assert_same(out[0], o)
            assert_same(out[1], r)
    for ref, env in zip(refs, mine):
        np.testing.assert_array_equal(normalization_state(env)["obs"]["mean"], ref.env.env.env.obs_rms.mean)
        assert_same(env.accumulated_reward, ref.env.accumulated_reward)
    # A subset of the members (one stopped): the others still match theirs.
    outs = step_vector_envs(mine[1:], [np.zeros((num_envs, 1), np.float32)] * 2)
    for ref, out in zip(refs[1:], outs):
        o, r, *_ = ref.step(np.zeros((num_envs, 1), np.float32))
        assert_same(out[0], o)
        assert_same(out[1], r)


def test_sharing_keeps_statistics_gathered_before_it_and_refuses_mismatched_settings():
    """share_normalization copies each member's running statistics and returns into its row, and
    leaves envs whose settings differ unshared (None)."""
    a, b = ours(vector(2), 0.9), ours(vector(2), 0.9)
    a.reset(seed=0)
    for act in actions_for(0, 30, 2):
        a.step(act)
    before = normalization_state(a)
    acc = a.accumulated_reward.copy()
    share_normalization([a, b])
    after = normalization_state(a)
    np.testing.assert_array_equal(after["obs"]["mean"], before["obs"]["mean"])
    assert after["reward"]["count"] == before["reward"]["count"]
    np.testing.assert_array_equal(a.accumulated_reward, acc)
    assert normalization_state(b)["obs"]["count"] == pytest.approx(1e-4)
    other = NormalizeVector(vector(2), True, 1.0, True, 3.0, 0.9)  # another clip_obs
    assert share_normalization([ours(vector(2), 0.9), other]) is None


def test_frozen_statistics_are_not_updated_and_mismatch_is_refused():
    """Evaluation loads the saved statistics and freezes them; a saved state that does not match
    what the env normalizes is refused with both sides named."""
    env = ours(vector(2), 0.9)
    state = {"obs": {"mean": np.full(3, 2.0), "var": np.full(3, 4.0), "count": 10.0},
             "reward": {"mean": np.array(0.0), "var": np.array(9.0), "count": 10.0}}
    load_normalization_state(env, state, freeze=True)
    obs, _ = env.reset(seed=0)
    raw = vector(2)
    raw_obs, _ = raw.reset(seed=0)
    np.testing.assert_allclose(obs, np.clip((raw_obs - 2.0) / np.sqrt(4.0 + 1e-8), -5, 5), rtol=1e-6)
    for act in actions_for(1, 20, 2):
        env.step(act)
    assert normalization_state(env)["obs"]["count"] == 10.0
    with pytest.raises(ValueError, match="mismatch for 'reward'.*saved=False.*env normalizes=True"):
        load_normalization_state(env, {"obs": state["obs"]})


def test_a_failing_env_fails_alone_in_step_vector_envs():
    """An env error is returned for its env only; the others are stepped and normalized."""

    class Broken(gym.vector.VectorWrapper):
        def step(self, actions):
            raise RuntimeError("simulator exploded")

    good, bad = ours(vector(2), 0.9), NormalizeVector(Broken(vector(2)), True, 5.0, True, 3.0, 0.9)
    for env in (good, bad):
        env.reset(seed=0)
    share_normalization([good, bad])
    outs = step_vector_envs([good, bad], [np.zeros((2, 1), np.float32)] * 2)
    assert isinstance(outs[1], RuntimeError) and not isinstance(outs[0], BaseException)
    assert normalization_state(good)["obs"]["count"] == pytest.approx(1e-4 + 4)  # reset + one step, 2 envs
    assert normalization_state(bad)["obs"]["count"] == pytest.approx(1e-4 + 2)
