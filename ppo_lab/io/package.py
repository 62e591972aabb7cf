"""Reading a ppo_lab Hub package (``model.safetensors`` + ``config.yaml``; written by
``python -m ppo_lab.hub package``) into a checkpoint-shaped state, and downloading one from the
Hugging Face Hub. ``ppo_lab.load`` builds the agent from it as from a checkpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml

from ppo_lab.config import ConfigError
from ppo_lab.io.checkpoint import CheckpointError


#: The weights file of a package; with :data:`CONFIG_FILE` it marks a dir as a package.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
#: Prefix of the normalization statistics inside :data:`WEIGHTS_FILE`.
NORM_PREFIX = "normalization."
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ConfigError('Hub packages need safetensors; install it with: pip install -e ".[hub]"') from None
    return safetensors.torch


def _huggingface_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError('the Hub needs huggingface_hub; install it with: pip install -e ".[hub]"') from None
    return huggingface_hub


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if it reads ``<user or org>/<name>``.

    Raises:
        ConfigError: missing or malformed.
    """
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise ConfigError(f"repo_id={repo_id!r} is not allowed: a Hub model repo, <user or org>/<name>")
    return repo_id


# ------------------------------------------------------------------ reading a package
def is_package(path: str | Path) -> bool:
    """True for a dir holding ``model.safetensors`` and ``config.yaml`` (what ``package`` writes)."""
    path = Path(path)
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def read_package(path: str | Path) -> tuple[dict[str, Any], Path]:
    """A package as a checkpoint-shaped state (``model``, ``normalization`` as tensors,
    ``config``, ``global_step``), for ``ppo_lab.load``'s usual build; and the weights file.

    Raises:
        CheckpointError: the dir is not a package, or its files cannot be read.
    """
    path = Path(path)
    if not is_package(path):
        raise CheckpointError(f"{path} is not a ppo_lab Hub package (needs {WEIGHTS_FILE} and {CONFIG_FILE})")
    st = _safetensors()
    weights = path / WEIGHTS_FILE
    try:
        tensors = st.load_file(str(weights))
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
        config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except Exception as exc:  # a truncated file, a foreign format...
        raise CheckpointError(f"cannot read the package {path}: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / CONFIG_FILE} is not a config mapping")
    model = {k: v for k, v in tensors.items() if not k.startswith(NORM_PREFIX)}
    normalization: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(NORM_PREFIX):
            group, stat = key[len(NORM_PREFIX):].split(".", 1)
            normalization.setdefault(group, {})[stat] = float(value) if stat == "count" else value
    return {"model": model, "normalization": normalization, "config": config,
            "global_step": int(metadata.get("global_step", 0))}, weights


def download(repo_id: str, revision: Optional[str] = None) -> Path:
    """Download the Hub model repo ``repo_id`` (``huggingface_hub.snapshot_download``, into its
    cache) and return the local dir. Needs the network (not available on the project's CI).

    Raises:
        ConfigError: a malformed ``repo_id``, or huggingface_hub is missing.
        CheckpointError: the repo holds no ppo_lab package.
    """
    hub = _huggingface_hub()
    local = Path(hub.snapshot_download(repo_id=check_repo_id(repo_id), revision=revision))
    if not is_package(local):
        raise CheckpointError(f"hf://{repo_id} is not a ppo_lab package (no {WEIGHTS_FILE} and {CONFIG_FILE}); "
                              "make one with: python -m ppo_lab.hub push <run dir> repo_id=<user/name>")
    return local
