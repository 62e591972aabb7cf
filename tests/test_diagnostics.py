"""Training-health warnings: each fires on its pathology, once per run, and not on healthy stats."""

import math

from ppo_lab.training.diagnostics import EV_PATIENCE, EV_WARMUP, Diagnostics

HEALTHY = {"approx_kl": 0.01, "explained_variance": 0.5, "entropy": 0.6}


def diag():
    return Diagnostics(kl_reference=0.01, max_entropy=math.log(2))


def test_healthy_updates_raise_nothing():
    d = diag()
    assert all(d.check(HEALTHY, p / 10) == {} for p in range(11))


def test_high_kl_needs_three_consecutive_updates_and_warns_once():
    d = diag()
    high = {**HEALTHY, "approx_kl": 0.06}
    assert d.check(high, 0.5) == {} and d.check(high, 0.5) == {}
    assert "approx_kl=0.0600" in d.check(high, 0.5)["high_kl"]
    assert d.check(high, 0.5) == {}  # once per run
    d2 = diag()
    d2.check(high, 0.5), d2.check(high, 0.5), d2.check(HEALTHY, 0.5)  # streak broken
    assert d2.check(high, 0.5) == {}


BAD_EV = {**HEALTHY, "explained_variance": -0.2}


def test_negative_explained_variance_needs_a_sustained_streak_and_warns_once():
    assert EV_PATIENCE > 1
    d = diag()
    for _ in range(EV_PATIENCE - 1):
        assert d.check(BAD_EV, 0.5) == {}
    assert "explained_variance=-0.200" in d.check(BAD_EV, 0.5)["negative_explained_variance"]
    assert all(d.check(BAD_EV, 0.5) == {} for _ in range(2 * EV_PATIENCE))  # once per run


def test_single_negative_explained_variance_update_does_not_warn():
    # A solved CartPole run: values nearly constant, one late noisy update with EV < 0.
    d = diag()
    assert all(d.check(HEALTHY, p / 100) == {} for p in range(90))
    assert d.check(BAD_EV, 0.9) == {}
    assert all(d.check(HEALTHY, p / 100) == {} for p in range(91, 101))


def test_interrupted_negative_explained_variance_streak_does_not_warn():
    d = diag()
    for _ in range(3):
        assert all(d.check(BAD_EV, 0.5) == {} for _ in range(EV_PATIENCE - 1))
        assert d.check(HEALTHY, 0.5) == {}  # streak broken
    nan_ev = {**HEALTHY, "explained_variance": float("nan")}
    assert all(d.check(BAD_EV, 0.5) == {} for _ in range(EV_PATIENCE - 1))
    assert d.check(nan_ev, 0.5) == {}  # constant returns: not a negative update either
    assert all(d.check(BAD_EV, 0.5) == {} for _ in range(EV_PATIENCE - 1))


def test_negative_explained_variance_before_warmup_does_not_count():
    d = diag()
    assert all(d.check(BAD_EV, EV_WARMUP / 2) == {} for _ in range(3 * EV_PATIENCE))
    assert d.check(BAD_EV, EV_WARMUP) == {}  # the warmup boundary itself is still warmup
    # The streak starts after the warmup: the pre-warmup updates gave it no head start.
    assert all(d.check(BAD_EV, 0.2) == {} for _ in range(EV_PATIENCE - 1))
    assert "negative_explained_variance" in d.check(BAD_EV, 0.2)


def test_entropy_collapse_discrete_and_continuous():
    assert "entropy_collapse" in diag().check({**HEALTHY, "entropy": 0.001}, 0.5)
    cont = Diagnostics(kl_reference=0.01, max_entropy=None)
    assert cont.check({"approx_kl": 0.0, "explained_variance": 0.5, "entropy": -3.0, "action_std": 0.2}, 0.5) == {}
    assert "entropy_collapse" in cont.check({"action_std": 0.001}, 0.5)


def test_log_std_at_its_bound():
    cont = Diagnostics(kl_reference=0.01, max_entropy=None)
    assert cont.check({}, 0.5, log_std=(-1.0, 0.5)) == {}
    assert "log_std_at_bound" in cont.check({}, 0.5, log_std=(-19.8, 0.0))
