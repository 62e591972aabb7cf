"""The optional-dependency extras: dev stays light, and ray can be installed on top of it."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
requirements = pytest.importorskip("packaging.requirements")

EXTRAS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
    "optional-dependencies"
]


def names(extra: str) -> dict[str, "requirements.Requirement"]:
    return {(r := requirements.Requirement(s)).name.lower(): r for s in EXTRAS[extra]}


def test_dev_does_not_pull_ray():
    assert "ray" not in names("dev")["ppo_lab"].extras
    assert not {"ray", "hydra-ray-launcher"} & names("dev").keys()


def test_ray_extra_keeps_joblib_on_a_release_that_does_not_need_cloudpickle_3():
    # hydra-ray-launcher requires cloudpickle<3; joblib 1.6 requires cloudpickle>=3.0.
    joblib = names("ray")["joblib"].specifier
    assert "1.5.3" in joblib and "1.6.0" not in joblib


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
                    reason="ray extra not installed")
def test_installed_requirements_are_consistent_with_ray():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
