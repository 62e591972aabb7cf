"""The allocation-free distributions match torch.distributions: the numpy acting side (sample,
mode, log_prob) and the torch training side (log_prob_entropy)."""

import numpy as np
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Normal

from ppo_lab.policies.distributions import Bernoulli, Categorical, DiagGaussian, MultiCategorical


def test_categorical_log_prob_and_entropy_match_torch():
    torch.manual_seed(0)
    logits = torch.randn(64, 5) * 3
    actions = torch.randint(0, 5, (64,))
    ref = TorchCategorical(logits=logits)
    logp, ent = Categorical().log_prob_entropy(logits, actions)
    torch.testing.assert_close(logp, ref.log_prob(actions))
    torch.testing.assert_close(ent, ref.entropy())
    np_logp = Categorical().log_prob(logits.numpy(), actions.numpy())
    np.testing.assert_allclose(np_logp, ref.log_prob(actions).numpy(), rtol=1e-5, atol=1e-6)


def test_categorical_sampling_frequencies_and_log_prob_of_the_sample():
    logits = np.log(np.array([[0.1, 0.6, 0.3]], np.float32)).repeat(40_000, axis=0) + 5.0  # unnormalized
    actions, logp = Categorical().sample(logits, np.random.default_rng(0))
    assert actions.shape == (40_000,) and logp.dtype == np.float32
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / 40_000, [0.1, 0.6, 0.3], atol=0.01)
    np.testing.assert_allclose(logp, np.log([0.1, 0.6, 0.3])[actions], rtol=1e-5)
    assert Categorical().mode(logits[:1]).item() == 1
    # Reproducible from the generator's seed, different for another seed.
    again, _ = Categorical().sample(logits[:500], np.random.default_rng(0))
    np.testing.assert_array_equal(again, actions[:500])
    other, _ = Categorical().sample(logits[:500], np.random.default_rng(1))
    assert (other != actions[:500]).any()


def test_categorical_sampling_never_picks_an_impossible_action():
    logits = np.array([[0.0, -1e9, 3.0]], np.float32).repeat(5000, axis=0)
    actions, logp = Categorical().sample(logits, np.random.default_rng(0))
    assert not (actions == 1).any() and np.isfinite(logp).all()


def test_multicategorical_sums_its_components():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)  # components of 3 and 2 choices
    dist = MultiCategorical([3, 2])
    actions, logp = dist.sample(logits, rng)
    assert actions.shape == (6, 2) and (actions[:, 0] < 3).all() and (actions[:, 1] < 2).all()
    t = torch.from_numpy(logits)
    ref = (TorchCategorical(logits=t[:, :3]).log_prob(torch.from_numpy(actions[:, 0]))
           + TorchCategorical(logits=t[:, 3:]).log_prob(torch.from_numpy(actions[:, 1])))
    np.testing.assert_allclose(logp, ref.numpy(), rtol=1e-5)
    np.testing.assert_allclose(dist.log_prob(logits, actions), ref.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(dist.mode(logits), np.stack([logits[:, :3].argmax(1), logits[:, 3:].argmax(1)], 1))


def test_gaussian_log_prob_and_entropy_match_torch():
    torch.manual_seed(0)
    mean, log_std = torch.randn(32, 3), torch.randn(3) * 0.3
    actions = torch.randn(32, 3)
    ref = Normal(mean, log_std.exp())
    logp, ent = DiagGaussian().log_prob_entropy(mean, log_std, actions)
    torch.testing.assert_close(logp, ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(ent, ref.entropy().sum(-1))
    np_logp = DiagGaussian().log_prob(mean.numpy(), log_std.numpy(), actions.numpy())
    np.testing.assert_allclose(np_logp, ref.log_prob(actions).sum(-1).numpy(), rtol=1e-5)


def test_gaussian_sample_statistics_log_prob_and_mode():
    mean = np.array([[1.0, -2.0]], np.float32).repeat(50_000, axis=0)
    log_std = np.log(np.array([0.5, 2.0], np.float32))
    x, logp = DiagGaussian().sample(mean, log_std, np.random.default_rng(0))
    assert x.dtype == np.float32 and logp.shape == (50_000,)
    np.testing.assert_allclose(x.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(x.std(0), [0.5, 2.0], atol=0.03)
    ref = Normal(torch.from_numpy(mean), torch.from_numpy(log_std).exp()).log_prob(torch.from_numpy(x)).sum(-1)
    np.testing.assert_allclose(logp, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert DiagGaussian().mode(mean) is mean


def test_categorical_sampling_survives_an_exponential_draw_of_zero():
    """float32 Exp(1) draws are exactly 0 about once in 2**23; with generator seed 0 the first
    such draw is number 8,620,848. A zero there would pick an action of probability e**-200
    (w / 0 = inf). The sampler draws in float64, where a zero is ~2**30 times rarer."""
    logits = np.array([[-200.0, 0.0]], np.float32).repeat(4_310_425, axis=0)
    actions, logp = Categorical().sample(logits, np.random.default_rng(0))
    assert not (actions == 0).any()
    assert np.isfinite(logp).all()


def test_action_rng_is_not_an_env_stream():
    """gymnasium seeds env i with SeedSequence(seed + i); the action sampler must not replay
    env 0's reset noise as action noise, as default_rng(seed) would."""
    from gymnasium.utils import seeding

    from ppo_lab.policies.distributions import action_rng

    env0, _ = seeding.np_random(5)
    assert not np.array_equal(action_rng(5).bit_generator.random_raw(4), env0.bit_generator.random_raw(4))
    np.testing.assert_array_equal(action_rng(5).random(3), action_rng(5).random(3))


def test_bernoulli_log_prob_and_entropy_match_torch_summed_over_bits():
    torch.manual_seed(0)
    logits = torch.randn(64, 5) * 4
    bits = torch.randint(0, 2, (64, 5))
    ref = TorchBernoulli(logits=logits)
    logp, ent = Bernoulli().log_prob_entropy(logits, bits)
    torch.testing.assert_close(logp, ref.log_prob(bits.float()).sum(-1))
    torch.testing.assert_close(ent, ref.entropy().sum(-1))
    np_logp = Bernoulli().log_prob(logits.numpy(), bits.numpy())
    assert np_logp.dtype == np.float32
    np.testing.assert_allclose(np_logp, ref.log_prob(bits.float()).sum(-1).numpy(), rtol=1e-5, atol=1e-5)
    # Extreme logits stay finite (softplus, not log(sigmoid)).
    big = torch.tensor([[80.0, -80.0]])
    assert torch.isfinite(Bernoulli().log_prob_entropy(big, torch.tensor([[0, 1]]))[0]).all()


def test_bernoulli_sampling_frequencies_mode_and_log_prob_of_the_sample():
    p = np.array([0.1, 0.5, 0.9])
    logits = np.log(p / (1 - p)).astype(np.float32)[None].repeat(40_000, axis=0)
    bits, logp = Bernoulli().sample(logits, np.random.default_rng(0))
    assert bits.shape == (40_000, 3) and bits.dtype == np.int64 and logp.dtype == np.float32
    np.testing.assert_allclose(bits.mean(0), p, atol=0.01)
    np.testing.assert_allclose(logp, np.log(np.where(bits == 1, p, 1 - p)).sum(-1), rtol=1e-4)
    np.testing.assert_array_equal(Bernoulli().mode(logits[:1]), [[0, 0, 1]])  # logit 0 is not > 0
