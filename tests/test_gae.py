"""GAE pinned on a hand-computed case with a termination and a truncation inside the rollout."""

import numpy as np
import pytest

from ppo_lab.algo.advantages import compute_gae


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Scalar double loop, straight from the definition."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if terminated[t, n] else gamma * next_values[t, n]
            delta = rewards[t, n] + bootstrap - values[t, n]
            done = terminated[t, n] or truncated[t, n]
            running = delta + (0.0 if done else gamma * lam * running)
            adv[t, n] = running
    return adv


def hand_case():
    col = lambda xs, dtype=np.float32: np.array(xs, dtype=dtype)[:, None]  # noqa: E731
    rewards = col([1, 2, 0, 3, 1])
    values = col([0.5, 1.0, 2.0, 1.5, 1.0])
    # next_values[1] = 9 is the value of the final obs of a *terminated* episode: must be ignored.
    # next_values[3] = 4 is the value of the true final obs of a *truncated* episode: must be used.
    next_values = col([1.0, 9.0, 1.5, 4.0, 2.0])
    terminated = col([0, 1, 0, 0, 0], bool)
    truncated = col([0, 0, 0, 1, 0], bool)
    return rewards, values, next_values, terminated, truncated


def test_gae_hand_computed_termination_and_truncation():
    # gamma = lambda = 0.5 -> gamma * lambda = 0.25.
    #   delta4 = 1 + 0.5*2 - 1   = 1.0    A4 = 1.0
    #   delta3 = 3 + 0.5*4 - 1.5 = 3.5    A3 = 3.5  (truncated: bootstrap 4, recursion cut)
    #   delta2 = 0 + 0.5*1.5 - 2 = -1.25  A2 = -1.25 + 0.25*3.5 = -0.375
    #   delta1 = 2 + 0 - 1       = 1.0    A1 = 1.0  (terminated: no bootstrap)
    #   delta0 = 1 + 0.5*1 - 0.5 = 1.0    A0 = 1.0 + 0.25*1.0 = 1.25
    adv, ret = compute_gae(*hand_case(), gamma=0.5, gae_lambda=0.5)
    np.testing.assert_allclose(adv[:, 0], [1.25, 1.0, -0.375, 3.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [1.75, 2.0, 1.625, 5.0, 2.0], rtol=1e-6)


def test_truncation_bootstraps_from_true_final_observation_not_reset_observation():
    rewards, values, next_values, terminated, truncated = hand_case()
    wrong = next_values.copy()
    wrong[3] = values[4]  # what a bug would use: V(obs after the reset)
    adv_right, _ = compute_gae(rewards, values, next_values, terminated, truncated, 0.5, 0.5)
    adv_wrong, _ = compute_gae(rewards, values, wrong, terminated, truncated, 0.5, 0.5)
    assert adv_right[3, 0] == pytest.approx(3.5)
    assert adv_wrong[3, 0] == pytest.approx(3 + 0.5 * 1.0 - 1.5)


def test_termination_ignores_next_value():
    rewards, values, next_values, terminated, truncated = hand_case()
    changed = next_values.copy()
    changed[1] = -100.0
    a1, _ = compute_gae(rewards, values, next_values, terminated, truncated, 0.5, 0.5)
    a2, _ = compute_gae(rewards, values, changed, terminated, truncated, 0.5, 0.5)
    np.testing.assert_array_equal(a1, a2)


def test_vectorized_matches_loop_on_random_rollouts():
    rng = np.random.default_rng(0)
    T, N = 37, 5
    args = (
        rng.normal(size=(T, N)).astype(np.float32),
        rng.normal(size=(T, N)).astype(np.float32),
        rng.normal(size=(T, N)).astype(np.float32),
        rng.random((T, N)) < 0.1,
        rng.random((T, N)) < 0.05,
    )
    adv, ret = compute_gae(*args, gamma=0.99, gae_lambda=0.95)
    np.testing.assert_allclose(adv, reference_gae(*args, 0.99, 0.95), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, adv + args[1], rtol=1e-6)


def test_lambda_one_gives_discounted_return_minus_value():
    rewards = np.ones((3, 1), np.float32)
    values = np.zeros((3, 1), np.float32)
    nv = np.zeros((3, 1), np.float32)
    no = np.zeros((3, 1), bool)
    adv, _ = compute_gae(rewards, values, nv, no, no, gamma=0.9, gae_lambda=1.0)
    np.testing.assert_allclose(adv[:, 0], [1 + 0.9 + 0.81, 1 + 0.9, 1], rtol=1e-6)


def test_shape_mismatch_raises():
    a = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        compute_gae(a, a, np.zeros((3, 1), np.float32), a.astype(bool), a.astype(bool), 0.9, 0.9)
