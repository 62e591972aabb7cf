"""PPO loss terms pinned on small hand-checked cases."""

import math

import pytest
import torch

from ppo_lab.algo.losses import explained_variance, normalize_advantages, ppo_losses, total_loss, update_kl_beta


def terms(new_lp, old_lp, adv, new_v=None, old_v=None, ret=None, clip=0.2, clip_vloss=True, norm_adv=False, beta=None):
    n = len(new_lp)
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return ppo_losses(
        t(new_lp), t(old_lp), t(adv),
        t(new_v if new_v is not None else [0.0] * n), t(old_v if old_v is not None else [0.0] * n),
        t(ret if ret is not None else [0.0] * n), torch.zeros(n), clip, clip_vloss, norm_adv, beta,
    )


def test_clipped_surrogate_hand_case():
    # ratios e^0.5=1.6487 (A=+1, clipped to 1.2) and e^-0.5=0.6065 (A=-1, clipped to 0.8 -> pessimistic max)
    out = terms([0.5, -0.5], [0.0, 0.0], [1.0, -1.0])
    # sample 1: max(-1*1.6487, -1*1.2) = -1.2 ; sample 2: max(1*0.6065, 1*0.8) = 0.8 -> mean -0.2
    assert out["policy_loss"].item() == pytest.approx(-0.2, abs=1e-6)
    assert out["clipfrac"].item() == pytest.approx(1.0)


def test_unclipped_side_keeps_ratio():
    # ratio 1.6487 with A = -1: the unclipped term is the pessimistic one -> loss = 1.6487
    out = terms([0.5], [0.0], [-1.0])
    assert out["policy_loss"].item() == pytest.approx(math.exp(0.5), rel=1e-6)


def test_ratio_one_gives_zero_kl_and_no_clipping():
    out = terms([-0.3, -1.2, -2.0], [-0.3, -1.2, -2.0], [1.0, -2.0, 0.5])
    assert out["approx_kl"].item() == 0.0
    assert out["old_approx_kl"].item() == 0.0
    assert out["clipfrac"].item() == 0.0
    assert out["policy_loss"].item() == pytest.approx(-(1.0 - 2.0 + 0.5) / 3, abs=1e-6)


def test_approx_kl_estimator_is_r_minus_1_minus_log_r():
    out = terms([math.log(2.0)], [0.0], [0.0])
    assert out["approx_kl"].item() == pytest.approx((2 - 1) - math.log(2.0), rel=1e-6)
    assert out["old_approx_kl"].item() == pytest.approx(-math.log(2.0), rel=1e-6)


def test_value_clipping_hand_case():
    # old V = 1, new V = 2, target 3, clip 0.2: clipped V = 1.2 -> (1.8)^2 = 3.24 > (1)^2 = 1
    out = terms([0.0], [0.0], [0.0], new_v=[2.0], old_v=[1.0], ret=[3.0], clip=0.2)
    assert out["value_loss"].item() == pytest.approx(0.5 * 3.24, rel=1e-6)
    off = terms([0.0], [0.0], [0.0], new_v=[2.0], old_v=[1.0], ret=[3.0], clip=0.2, clip_vloss=False)
    assert off["value_loss"].item() == pytest.approx(0.5 * 1.0, rel=1e-6)


def test_advantage_normalization_inside_loss_is_per_call():
    adv = torch.tensor([1.0, 2.0, 3.0, 10.0])
    normed = normalize_advantages(adv)
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normed.std().item() == pytest.approx(1.0, rel=1e-5)
    # With ratio 1 the clipped loss is -mean(normalized adv) = 0 exactly when normalizing.
    out = terms([0.0] * 4, [0.0] * 4, adv.tolist(), norm_adv=True)
    assert out["policy_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_total_loss_combines_terms_with_coefficients():
    t = {"policy_loss": torch.tensor(1.0), "entropy": torch.tensor(2.0), "value_loss": torch.tensor(4.0)}
    assert total_loss(t, ent_coef=0.01, vf_coef=0.5).item() == pytest.approx(1.0 - 0.02 + 2.0)


def test_kl_penalty_objective_and_beta_rule():
    out = terms([math.log(2.0)], [0.0], [1.0], beta=3.0)
    kl = (2 - 1) - math.log(2.0)
    assert out["policy_loss"].item() == pytest.approx(-2.0 + 3.0 * kl, rel=1e-6)
    assert update_kl_beta(1.0, kl=0.001, kl_target=0.01) == 0.5   # < target / 1.5
    assert update_kl_beta(1.0, kl=0.02, kl_target=0.01) == 2.0    # > target * 1.5
    assert update_kl_beta(1.0, kl=0.012, kl_target=0.01) == 1.0


def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), y.mean().item()), y) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(explained_variance(y, torch.ones(4)))
