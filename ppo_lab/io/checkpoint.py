"""Atomic checkpoint save and safe load.

A checkpoint is a dict of tensors and plain Python values written with ``torch.save`` to a temp
file in the same directory and renamed into place (``os.replace`` is atomic on POSIX), so a crash
mid-write never leaves a truncated file under the final name. Loading uses
``torch.load(weights_only=True)``: no arbitrary pickled objects are executed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppo_lab.io.paths import CheckpointError, find_checkpoint, run_dir_of  # noqa: F401 - re-exported


def torch_from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor holding a copy of ``array``: how numpy state goes into a checkpoint (tensors
    load with ``weights_only=True``; the copy keeps later in-place changes out of it)."""
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def state_of(components: dict[str, Any]) -> dict[str, Any]:
    """``{name: component.state_dict()}``: how a checkpoint composes its parts (network,
    optimizer, normalization statistics, RNGs, sinks, ...), each giving its own state."""
    return {name: component.state_dict() for name, component in components.items()}


def load_components(components: dict[str, Any], state: dict[str, Any]) -> None:
    """Inverse of :func:`state_of`: ``component.load_state_dict(state[name])`` for each part;
    a part the checkpoint lacks (an older checkpoint) is left as it is.

    Raises:
        CheckpointError: a part does not fit (naming it).
    """
    for name, component in components.items():
        if state.get(name) is None:
            continue
        try:
            component.load_state_dict(state[name])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint part {name!r} does not fit this run ({type(exc).__name__}: {exc})") from None


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; checkpoints get the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file does not exist, is truncated or corrupt, or holds anything but
            tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle/unpickling errors: say which file, not a pickle trace
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not a ppo_lab checkpoint (no model/config)")
    return state
