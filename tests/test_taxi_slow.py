"""Taxi-v4 with action masks reaches mean eval return >= 7.0 (10 deterministic episodes) on
seeds 1-3 with env=taxi's own budget (300k env steps, ~1 min each on 2 CPU cores). Slow: not
in CI (`python -m pytest -q -m slow tests/test_taxi_slow.py`)."""

import pytest

from conftest import compose_cfg
from ppo_lab.commands.train import train


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_masked_taxi_reaches_7(tmp_path, seed):
    result = train(compose_cfg(["env=taxi", f"seed={seed}", "logger=none", "progress=false"]), tmp_path)
    assert result["eval/episodic_return"] >= 7.0, result
