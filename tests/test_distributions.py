"""The allocation-free distributions match torch.distributions."""

import torch
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Normal

from ppo_lab.distributions import Categorical, DiagGaussian


def test_categorical_log_prob_and_entropy_match_torch():
    torch.manual_seed(0)
    logits = torch.randn(64, 5)
    actions = torch.randint(0, 5, (64,))
    ref = TorchCategorical(logits=logits)
    logp, ent = Categorical().log_prob_entropy(logits, actions)
    torch.testing.assert_close(logp, ref.log_prob(actions))
    torch.testing.assert_close(ent, ref.entropy())
    torch.testing.assert_close(Categorical().log_prob(logits, actions), ref.log_prob(actions))


def test_categorical_sampling_frequencies_and_log_prob_of_the_sample():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(40_000, 3)
    actions, logp = Categorical().sample_and_log_prob(logits)
    counts = torch.bincount(actions, minlength=3).float() / 40_000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.6, 0.3]), atol=0.01, rtol=0)
    torch.testing.assert_close(logp, TorchCategorical(logits=logits).log_prob(actions))
    assert Categorical().mode(logits[:1]).item() == 1
    # The exponential race is torch.multinomial's own single-sample algorithm: same draws.
    torch.manual_seed(3)
    ours, _ = Categorical().sample_and_log_prob(logits[:500])
    torch.manual_seed(3)
    torch.testing.assert_close(ours, torch.multinomial(torch.softmax(logits[:500], -1), 1).squeeze(-1))


def test_gaussian_log_prob_and_entropy_match_torch():
    torch.manual_seed(0)
    mean, log_std = torch.randn(32, 3), torch.randn(3) * 0.3
    actions = torch.randn(32, 3)
    ref = Normal(mean, log_std.exp())
    logp, ent = DiagGaussian().log_prob_entropy(mean, log_std, actions)
    torch.testing.assert_close(logp, ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(ent, ref.entropy().sum(-1))


def test_gaussian_sample_statistics_log_prob_and_mode():
    torch.manual_seed(0)
    mean = torch.tensor([[1.0, -2.0]]).expand(50_000, 2)
    log_std = torch.log(torch.tensor([0.5, 2.0]))
    x, logp = DiagGaussian().sample_and_log_prob(mean, log_std)
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -2.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.5, 2.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(logp, Normal(mean, log_std.exp()).log_prob(x).sum(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(DiagGaussian().mode(mean), mean)
