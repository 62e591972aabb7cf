"""Linear annealing of the learning rate and clip coefficient (37 details, detail 4)."""

from __future__ import annotations


def linear_anneal(initial: float, iteration: int, num_iterations: int) -> float:
    """Value for update ``iteration`` (1-based) of ``num_iterations``: ``initial`` at the first
    update, falling linearly to ``initial / num_iterations`` at the last (CleanRL's
    ``frac = 1 - (iteration - 1) / num_iterations``)."""
    frac = 1.0 - (iteration - 1.0) / num_iterations
    return frac * initial
