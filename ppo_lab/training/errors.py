"""How training ends early: divergence and interruption (raised by the trainer and the population)."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """A loss or parameter became NaN/inf. The message names the update and the quantity."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved. The message says how to resume."""
