"""The population update's numpy fast path computes what autograd computes: the PPO-clip loss's
closed-form gradient (``algo/loss_grads.py``) and the stacked networks' hand-derived backward
(``StackedActorCritic.loss_and_backward``), each against ``torch.autograd`` on the reference
code (``algo/losses.py``, ``StackedActorCritic.evaluate_actions``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import ROOT
from test_population import CONFIGS, member
from ppo_lab.algo.loss_grads import ppo_clip_losses_and_grads
from ppo_lab.algo.losses import ppo_losses, total_loss
from ppo_lab.algo.optim import FlatAdam, StackedAdam
from ppo_lab.config import ActionType
from ppo_lab.policies.actor_critic import ActorCritic
from ppo_lab.policies.stacked import StackedActorCritic
from ppo_lab.policies.distributions import LOG_STD_MAX
from ppo_lab.training.population import Population, as_rows, numpy_update_refusal, uniform

KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac", "loss")


def loss_inputs(m=3, b=40, seed=0):
    """Random ``(M, B)`` loss inputs whose ratios reach past the clip range both ways, with exact
    ties planted (ratio exactly 1, zero advantages, a new value equal to the old one)."""
    g = np.random.default_rng(seed)
    f = lambda *shape: g.standard_normal(shape).astype(np.float32)  # noqa: E731
    old_logp = f(m, b) - 1.0
    new_logp = old_logp + 0.4 * f(m, b)
    new_logp[:, :4] = old_logp[:, :4]  # ratio exactly 1: the two surrogate terms tie
    advantages = f(m, b)
    advantages[:, 4:6] = 0.0  # both surrogate terms 0 whatever the ratio: a tie outside the range
    old_value, returns = f(m, b), f(m, b)
    new_value = old_value + 0.5 * f(m, b)
    new_value[:, 6:8] = old_value[:, 6:8]  # clipped and unclipped value errors tie
    entropy = np.abs(f(m, b))
    return new_logp, old_logp, advantages, new_value, old_value, returns, entropy


def autograd_reference(inputs, clip, ent, vf, clip_vloss, norm_adv, weights):
    new_logp, old_logp, adv, new_value, old_value, returns, entropy = [torch.from_numpy(x.copy()) for x in inputs]
    for t in (new_logp, new_value, entropy):
        t.requires_grad_(True)
    coef = lambda c: torch.from_numpy(c) if isinstance(c, np.ndarray) else c  # noqa: E731
    terms = ppo_losses(new_logp, old_logp, adv, new_value, old_value, returns, entropy, coef(clip), clip_vloss,
                       norm_adv, None, weights=None if weights is None else torch.from_numpy(weights))
    terms["loss"] = total_loss(terms, coef(ent), coef(vf))
    terms["loss"].sum().backward()
    return ({k: v.detach().numpy() for k, v in terms.items()},
            new_logp.grad.numpy(), new_value.grad.numpy(), entropy.grad.numpy())


@pytest.mark.parametrize("clip_vloss", [True, False])
@pytest.mark.parametrize("norm_adv", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("per_member", [False, True])
def test_closed_form_loss_gradient_equals_autograd(clip_vloss, norm_adv, padded, per_member):
    inputs = loss_inputs()
    m, b = inputs[0].shape
    weights = None
    if padded:  # members with 40, 33 and 1 samples: padding at the end of each row
        weights = np.ones((m, b), dtype=np.float32)
        weights[1, 33:], weights[2, 1:] = 0.0, 0.0
    if per_member:
        clip, ent, vf = (np.array([0.1, 0.2, 0.3], np.float32), np.array([0.0, 0.01, 0.05], np.float32),
                         np.array([0.5, 1.0, 0.25], np.float32))
    else:
        clip, ent, vf = 0.2, 0.01, 0.5
    terms, d_logp, d_value, d_entropy = ppo_clip_losses_and_grads(*inputs, clip, ent, vf, clip_vloss, norm_adv, weights)
    ref_terms, ref_logp, ref_value, ref_entropy = autograd_reference(inputs, clip, ent, vf, clip_vloss, norm_adv, weights)
    clipped = np.abs(np.exp(inputs[0] - inputs[1]) - 1) > 0.3
    assert clipped.any() and (~clipped).any()  # both branches of the surrogate are exercised
    for key in KEYS:
        assert terms[key].shape == (m,) and terms[key].dtype == np.float32
        np.testing.assert_allclose(terms[key], ref_terms[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for got, ref in ((d_logp, ref_logp), (d_value, ref_value), (d_entropy, ref_entropy)):
        assert got.shape == (m, b) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    if padded:  # padding gets no gradient
        assert not d_logp[2, 1:].any() and not d_value[1, 33:].any() and not d_entropy[2, 1:].any()


def exact_log(value: float, tolerance: float = 0.0) -> np.float32:
    """A float32 ``x`` whose exp numpy and torch compute alike, within ``tolerance`` of
    ``float32(value)`` (0: exactly it); scanned ulp by ulp around ``log(value)``."""
    target = np.float32(value)
    x = np.float32(np.log(target))
    for _ in range(300):
        x = np.nextafter(x, np.float32(-np.inf))
    for _ in range(600):
        r = np.exp(x)
        if abs(float(r) - float(target)) <= tolerance and torch.exp(torch.tensor(x)).item() == float(r):
            return x
        x = np.nextafter(x, np.float32(np.inf))
    raise AssertionError(f"no float32 log of {value}")


def test_closed_form_gradient_splits_ties_as_autograd():
    """Hand-checked cases (B = 1, no normalization) where the two sides of a tied ``max`` have
    different derivatives, so sending all of it to one side, or dropping a clamp bound, shows."""
    one = lambda v: np.array([[v]], dtype=np.float32)  # noqa: E731

    def grads(new_logp, old_logp, adv, new_v, old_v, ret, clip):
        return ppo_clip_losses_and_grads(one(new_logp), one(old_logp), one(adv), one(new_v), one(old_v), one(ret),
                                         one(0.7), clip, 0.0, 1.0, clip_vloss=True, norm_adv=False)

    # Ratio 1 (r == clip(r)), A = 2: d policy_loss / d log p = -A * r = -2, half through each term.
    terms, d_logp, d_value, d_entropy = grads(-1.0, -1.0, 2.0, 0.5, 0.5, 1.5, 0.2)
    assert terms["policy_loss"][0] == pytest.approx(-2.0) and d_logp[0, 0] == pytest.approx(-2.0)
    assert terms["value_loss"][0] == pytest.approx(0.5) and d_value[0, 0] == pytest.approx(-1.0)
    assert d_entropy[0, 0] == 0.0
    # Ratio e^1, past 1 + clip, A > 0: the clipped term wins, no gradient.
    assert grads(0.0, -1.0, 2.0, 0.5, 0.5, 1.5, 0.2)[1][0, 0] == 0.0
    # Ratio r exactly at 1 + clip (r ~ 1.25, A = 1): the terms tie and the clamp passes its bound,
    # so the gradient is -A * r (an open clamp bound would halve it).
    x = exact_log(1.25, tolerance=1e-6)
    r = float(np.exp(x))  # ~1.25, and exactly representable: clip = r - 1 puts 1 + clip on it
    _, d_logp, _, _ = grads(float(x), 0.0, 1.0, 0.5, 0.5, 1.5, r - 1.0)
    assert d_logp[0, 0] == pytest.approx(-r)
    # Value: old 0, return 0.5, new 0.75, clip 0.25: (0.75 - 0.5)^2 = (0.25 - 0.5)^2, a tie; the
    # unclipped side's derivative is 2 * 0.25, the clipped side's 0 (past the range): half of
    # 0.5 * 0.5 = 0.125 (all to one side: 0.25 or 0).
    _, _, d_value, _ = grads(0.0, 0.0, 1.0, 0.75, 0.0, 0.5, 0.25)
    assert d_value[0, 0] == pytest.approx(0.125)
    ref = autograd_reference([one(0.0), one(0.0), one(1.0), one(0.75), one(0.0), one(0.5), one(0.7)],
                             0.25, 0.0, 1.0, True, False, None)
    assert ref[2][0, 0] == pytest.approx(0.125)
    # Value change exactly at the clip range (old 0, new 0.25, clip 0.25, return 1): the two value
    # terms tie and the clamp passes its bound: 0.5 * 2 * (0.25 - 1) = -0.75 (an open bound: -0.375).
    _, _, d_value, _ = grads(0.0, 0.0, 1.0, 0.25, 0.0, 1.0, 0.25)
    assert d_value[0, 0] == pytest.approx(-0.75)


def test_a_float_clip_bound_rounds_as_torchs():
    """``torch.clamp(r, 1 - clip, 1 + clip)`` rounds the double ``1 - clip`` to float32 once;
    ``float32(1) - clip`` can be an ulp away (clip = 0.058; about half of all clip values). A ratio exactly
    on torch's bound gets autograd's gradient."""
    clip = 0.058
    bound = np.float32(1.0 - clip)  # torch's lower bound
    assert bound != np.float32(1.0) - clip  # the case this pins
    inputs = [np.array([[v]], dtype=np.float32) for v in (exact_log(float(bound)), 0.0, -1.0, 0.5, 0.5, 1.5, 0.7)]
    _, d_logp, _, _ = ppo_clip_losses_and_grads(*inputs, clip, 0.0, 1.0, True, False)
    _, ref_logp, _, _ = autograd_reference(inputs, clip, 0.0, 1.0, True, False, None)
    assert ref_logp[0, 0] != 0.0 and d_logp[0, 0] == pytest.approx(ref_logp[0, 0])


def stacked_population(tmp_path, extra, same_coefficients=False):
    """Three stacked members; their coefficients differ (``CONFIGS``) unless ``same_coefficients``."""
    configs = [[f"seed={k + 1}"] for k in range(3)] if same_coefficients else CONFIGS
    trainers = [member(extra + o, tmp_path, f"p{k}")[0] for k, o in enumerate(configs)]
    return trainers, Population(trainers)


@pytest.mark.parametrize("extra", [[], ["env=pendulum"], ["network=mlp_shared"], ["network.activation=relu"],
                                   ["agent.clip_vloss=false", "agent.norm_adv=false"],
                                   ["env=taxi", "agent.action_masking=off", "agent.num_minibatches=4"]],
                         ids=["cartpole", "pendulum", "shared", "relu", "plain-loss", "one-hot-obs"])
@pytest.mark.parametrize("coefficients", ["per-member", "shared"])
def test_numpy_backward_equals_autograd_on_the_stacked_networks(tmp_path, extra, coefficients):
    trainers, population = stacked_population(tmp_path, extra, same_coefficients=coefficients == "shared")
    assert population.numpy_refusal is None
    rollouts = population.collect(range(len(trainers)))
    batches = [rollouts[i].buf.training_batch(rollouts[i].advantages, rollouts[i].returns, population.device)
               for i in range(len(trainers))]
    stacked = population._stack(batches)
    a = trainers[0].cfg.agent
    clip, ent, vf = (as_rows(uniform([t.cfg.agent.__dict__[k] for t in trainers]), population.device)
                     for k in ("clip_coef", "ent_coef", "vf_coef"))
    torch.manual_seed(0)
    with torch.no_grad():  # move the policies away from the rollout's so that ratios clip
        population.optimizer.flat.add_(0.3 * torch.randn_like(population.optimizer.flat))
        if trainers[0].network.continuous:  # member 0's log std past its clamp (no gradient there)
            population.stacked.params["log_std"][0, 0] = LOG_STD_MAX + 1.0  # and member 1's exactly at
            population.stacked.params["log_std"][1, 0] = LOG_STD_MAX  # it (after_optimizer_step's clamp):
                                                                      # the gradient passes
    clipfracs = []
    for mb, _ in population._minibatches(batches, stacked, [True] * 3, a.num_minibatches):
        logp, entropy, value = population._evaluate(mb)
        terms = ppo_losses(logp, mb.logprobs, mb.advantages, value, mb.values, mb.returns, entropy, clip,
                           a.clip_vloss, a.norm_adv, None, weights=mb.weights)
        loss = total_loss(terms, ent, vf)
        population.optimizer.zero_grad()
        loss.sum().backward()
        reference = population.optimizer.flat_grad.clone()
        population.optimizer.flat_grad.fill_(float("nan"))  # every entry must be written
        fast = population._numpy_step(mb, clip, ent, vf)
        got = population.optimizer.flat_grad
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max()))
        for key in KEYS[:-1]:
            torch.testing.assert_close(fast[key], terms[key].detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fast["loss"], loss.detach(), rtol=1e-4, atol=1e-6)
        clipfracs.append(float(terms["clipfrac"].max()))
        if trainers[0].network.continuous:
            log_std_grad = population.stacked.params["log_std"].grad
            assert float(log_std_grad[0, 0]) == 0.0
            assert float(log_std_grad[1, 0]) != 0.0
    assert max(clipfracs) > 0  # the clipped branch was taken
    for t in trainers:
        t.envs.close()


@pytest.mark.parametrize("extra, reason", [
    (["agent.loss=kl_penalty"], "agent.loss=kl_penalty"),
    (["env=taxi", "agent.num_minibatches=4"], "action masks"),
], ids=["kl_penalty", "masks"])
def test_the_fast_path_names_the_losses_and_masks_it_does_not_handle(tmp_path, extra, reason):
    trainers, population = stacked_population(tmp_path, extra)
    assert reason in population.numpy_refusal
    assert population.stacked is not None  # still stacked: the batched autograd path trains them
    assert "population of one" in numpy_update_refusal(trainers[:1], None)
    for t in trainers:
        t.envs.close()


@pytest.mark.parametrize("space, refused", [
    (gym.spaces.Discrete(3), None),
    (gym.spaces.Box(-1.0, 1.0, (2,)), None),
    (gym.spaces.MultiDiscrete([3, 2]), "MultiCategorical"),
    (gym.spaces.MultiBinary(3), "Bernoulli"),
], ids=["discrete", "box", "multidiscrete", "multibinary"])
def test_the_fast_path_names_the_distributions_it_does_not_handle(space, refused):
    action_type = ActionType.continuous if isinstance(space, gym.spaces.Box) else ActionType.discrete
    nets = [ActorCritic(gym.spaces.Box(-1.0, 1.0, (4,)), space, action_type, hidden_sizes=(8,)) for _ in range(2)]
    optimizer = StackedAdam([FlatAdam(list(n.parameters()), lr=1e-3) for n in nets])
    stacked = StackedActorCritic(nets, optimizer.flat, optimizer.flat_grad)
    reason = stacked.numpy_refusal()
    assert reason is None if refused is None else refused in reason
    if refused:
        with pytest.raises(ValueError, match=refused):
            stacked.loss_and_backward(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2), None)


def test_retain_freed_memory_stops_page_faults_on_repeated_large_arrays():
    """A minibatch step's pattern: 16 live arrays of 256 KiB, then all freed, 100 times. By default
    glibc gives the freed heap top back to the OS and faults every page in again on the next
    step; after ``retain_freed_memory`` the pages stay mapped."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        sys.path.insert(0, %r)
        from ppo_lab.training.runtime import retain_freed_memory
        if sys.argv[1] == "retain" and not retain_freed_memory():
            print("unsupported")
            sys.exit()
        x = np.ones((8, 128, 64), dtype=np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(100):
            live = [x * float(k) for k in range(16)]
            del live
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """ % str(ROOT))
    out = {mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                check=True).stdout.strip() for mode in ("default", "retain")}
    if out["retain"] == "unsupported":
        pytest.skip("this process's allocator has no glibc mallopt")
    faults = {mode: int(v) for mode, v in out.items()}
    assert faults["default"] > 100 * 64  # at least a 256 KiB array's 64 pages faulted in afresh per step
    assert faults["retain"] < faults["default"] / 10
