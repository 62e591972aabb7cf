"""Training-health warnings: each fires on its pathology, once per run, and not on healthy stats."""

import math

from ppo_lab.diagnostics import Diagnostics

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


def test_negative_explained_variance_only_after_warmup():
    d = diag()
    bad = {**HEALTHY, "explained_variance": -0.2}
    assert d.check(bad, 0.05) == {}
    assert "explained_variance=-0.200" in d.check(bad, 0.2)["negative_explained_variance"]


def test_entropy_collapse_discrete_and_continuous():
    assert "entropy_collapse" in diag().check({**HEALTHY, "entropy": 0.001}, 0.5)
    cont = Diagnostics(kl_reference=0.01, max_entropy=None)
    assert cont.check({"approx_kl": 0.0, "explained_variance": 0.5, "entropy": -3.0, "action_std": 0.2}, 0.5) == {}
    assert "entropy_collapse" in cont.check({"action_std": 0.001}, 0.5)


def test_log_std_at_its_bound():
    cont = Diagnostics(kl_reference=0.01, max_entropy=None)
    assert cont.check({}, 0.5, log_std=(-1.0, 0.5)) == {}
    assert "log_std_at_bound" in cont.check({}, 0.5, log_std=(-19.8, 0.0))
