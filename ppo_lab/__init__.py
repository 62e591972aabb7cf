"""ppo_lab: Hydra-configured Proximal Policy Optimization experiments, logged to W&B.

The public API (README, "Python API"): ``ppo_lab.load(path)`` -> :class:`Agent`
(``predict``, ``make_env``, ``evaluate``) and ``ppo_lab.train(overrides=[...])``. They are
imported on first use, so ``import ppo_lab`` and ``python -m ppo_lab.report`` stay light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Agent", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ppo_lab import api

        return getattr(api, name)
    raise AttributeError(f"module 'ppo_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(["__version__", *__all__])
