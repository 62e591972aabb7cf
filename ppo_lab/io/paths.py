"""Where a run's checkpoints are: the run dir / checkpoint-file resolution shared by train.py,
evaluate.py and resume (no torch import: the launcher process of a sweep uses it too)."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found or read. The message names the file."""


def find_checkpoint(path: str | Path, latest: bool = False) -> Path:
    """Resolve a run dir or a checkpoint file to a checkpoint file.

    Args:
        path: a checkpoint file, a run dir, or a run's ``checkpoints/`` dir.
        latest: pick the most recently written of ``final.pt`` and ``update_*.pt`` (resume);
            otherwise ``final.pt`` when present, else the newest periodic checkpoint (evaluate).

    Raises:
        CheckpointError: the path does not exist, or the run dir holds no checkpoint.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    final = ckpt_dir / "final.pt"
    periodic = sorted(ckpt_dir.glob("update_*.pt"))
    candidates = periodic + ([final] if final.is_file() else [])
    if not candidates:
        raise CheckpointError(
            f"no checkpoint found in {path} (looked for checkpoints/final.pt and checkpoints/update_*.pt)"
        )
    if latest:
        return max(candidates, key=lambda p: p.stat().st_mtime_ns)
    return final if final.is_file() else periodic[-1]


def run_dir_of(checkpoint: Path) -> Path:
    """The run dir a checkpoint file belongs to (the parent of its ``checkpoints/`` dir)."""
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent
