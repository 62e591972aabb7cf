"""Training-health warnings raised once per run from the per-update statistics.

An observer: it reads ``train/...`` statistics and never changes training state. Each warning is
issued at most once per run (in the log, and as ``diagnostics/<name> = 1`` in the metrics / W&B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ppo_lab.policies.distributions import LOG_STD_MAX, LOG_STD_MIN

#: Consecutive updates approx_kl must stay above KL_FACTOR x target before warning.
KL_PATIENCE = 3
KL_FACTOR = 5.0
#: Explained variance is judged only after this fraction of training.
EV_WARMUP = 0.1
#: Consecutive post-warmup updates with explained_variance < 0 before warning. EV is noisy when
#: the returns barely vary (e.g. CartPole solved at 500), so one negative update is no signal; a
#: value function that is really broken stays negative for many updates in a row.
EV_PATIENCE = 5
#: Entropy collapse: below this fraction of the maximum entropy (discrete) ...
ENTROPY_FRACTION = 0.01
#: ... or a mean action std below this (continuous).
MIN_ACTION_STD = 0.01
#: log_std within this distance of its clamp bounds risks NaN / frozen exploration.
LOG_STD_MARGIN = 0.5


@dataclass
class Diagnostics:
    """Checks one update's statistics for known PPO pathologies.

    Args:
        kl_reference: the KL to compare ``approx_kl`` with (``target_kl``, else ``kl_target``).
        max_entropy: entropy of the uniform policy (discrete; ``log n`` summed over components),
            or None for continuous actions.
    """

    kl_reference: float
    max_entropy: Optional[float]
    issued: set[str] = field(default_factory=set)
    _kl_streak: int = 0
    _ev_streak: int = 0

    def check(
        self, stats: dict[str, float], progress: float, log_std: Optional[tuple[float, float]] = None
    ) -> dict[str, str]:
        """New warnings for this update.

        Args:
            stats: the update's statistics (``approx_kl``, ``explained_variance``, ``entropy``,
                ``action_std``), without the ``train/`` prefix.
            progress: fraction of training done, in [0, 1].
            log_std: (min, max) of the policy's log std (continuous only).

        Returns:
            ``{name: message}`` for each pathology seen for the first time in this run.
        """
        found: dict[str, str] = {}
        kl = stats.get("approx_kl", 0.0)
        self._kl_streak = self._kl_streak + 1 if kl > KL_FACTOR * self.kl_reference else 0
        if self._kl_streak >= KL_PATIENCE:
            found["high_kl"] = (
                f"approx_kl={kl:.4f} has been above {KL_FACTOR:g}x the target "
                f"({self.kl_reference:g}) for {self._kl_streak} updates: lower the learning rate "
                "or clip_coef, or set agent.target_kl"
            )
        ev = stats.get("explained_variance", float("nan"))
        # Updates before the warmup, and non-finite EV (constant returns), break the streak.
        negative = progress > EV_WARMUP and math.isfinite(ev) and ev < 0
        self._ev_streak = self._ev_streak + 1 if negative else 0
        if self._ev_streak >= EV_PATIENCE:
            found["negative_explained_variance"] = (
                f"explained_variance={ev:.3f} has been < 0 for {self._ev_streak} consecutive updates (at "
                f"{progress:.0%} of training): the value function predicts worse than a constant "
                "(check reward scale, vf_coef, gamma)"
            )
        if self.max_entropy is not None and stats.get("entropy", math.inf) < ENTROPY_FRACTION * self.max_entropy:
            found["entropy_collapse"] = (
                f"entropy={stats['entropy']:.4f} is below {ENTROPY_FRACTION:.0%} of the maximum "
                f"{self.max_entropy:.3f}: the policy is nearly deterministic (raise ent_coef?)"
            )
        if self.max_entropy is None and stats.get("action_std", math.inf) < MIN_ACTION_STD:
            found["entropy_collapse"] = (
                f"action_std={stats['action_std']:.4f} < {MIN_ACTION_STD}: exploration has collapsed"
            )
        if log_std is not None and (log_std[0] < LOG_STD_MIN + LOG_STD_MARGIN or log_std[1] > LOG_STD_MAX - LOG_STD_MARGIN):
            found["log_std_at_bound"] = (
                f"log_std in [{log_std[0]:.2f}, {log_std[1]:.2f}] is at its clamp "
                f"[{LOG_STD_MIN}, {LOG_STD_MAX}]: risk of NaN log-probs or frozen exploration"
            )
        new = {k: v for k, v in found.items() if k not in self.issued}
        self.issued.update(new)
        return new
