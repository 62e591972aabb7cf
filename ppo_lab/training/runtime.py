"""The process a run trains in: device, torch threads, global seeds and their checkpointed state."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from ppo_lab.config import ConfigError, NetworkConfig, TrainConfig
from ppo_lab.io.checkpoint import torch_from_numpy


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. (CUDA code paths are not exercised on the
    project's CPU-only CI machines.)

    Raises:
        ConfigError: ``cuda`` asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; allowed: device=cpu or device=auto")
    return torch.device(name)


def resolve_torch_threads(cfg: TrainConfig) -> int:
    """The torch intra-op thread count of a run: ``cfg.torch_threads`` when set, else 1 for the
    project's MLP networks (per-op overhead dominates) and the number of CPU cores this process
    may use for CNNs and user networks."""
    if cfg.torch_threads is not None:
        return cfg.torch_threads
    if isinstance(cfg.network, NetworkConfig) and cfg.network.kind == "mlp":
        return 1
    # Cores this process may run on (taskset / SLURM / cgroup cpusets); not on macOS or Windows.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_everything(seed: int, torch_threads: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; set torch's thread count, and hold numpy's BLAS to the same."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_compute_threads(torch_threads)
    torch.backends.cudnn.deterministic = deterministic


def set_compute_threads(threads: int) -> None:
    """Torch's intra-op threads and numpy's BLAS threads (``threadpoolctl``), both ``threads``.

    Why numpy's too: the rollout policy and a population's update multiply in numpy, and
    OpenBLAS otherwise starts a thread per core for matrices past its size threshold. With
    ``n_jobs`` population workers on as many cores, those threads oversubscribe the cores and
    spin against each other (a CartPole population sweep ran 3-5x slower). OpenBLAS keeps the
    limit set by the first thread that sets it: a run started from another thread later in the
    same process keeps that count for numpy (a speed matter only)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


class GlobalRNG:
    """The process-wide generators (python ``random``, numpy's legacy global, torch's CPU) as a
    checkpoint component; torch's draws the minibatch permutations."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": [np_state[0], torch_from_numpy(np_state[1]), *np_state[2:]],
            "torch": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np_state = state["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
        torch.set_rng_state(state["torch"])


class GeneratorState:
    """A ``torch.Generator`` as a checkpoint component (a member's minibatch order)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["state"])


#: glibc ``mallopt`` parameters (``malloc.h``): the trim and mmap thresholds.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep freed memory in this process's heap instead of handing it back to the OS (glibc only).

    Why: glibc serves every allocation of at least ``M_MMAP_THRESHOLD`` (128 KiB by default) with
    a fresh ``mmap`` and unmaps it when freed, so an array of that size made and dropped on every
    minibatch step costs a page fault per 4 KiB page, every time. A population's batched arrays
    (``(M, B, 64)`` float32 is 128 KiB at ``M * B = 512``) are that size: at M = 8 the page faults
    more than doubled a numpy minibatch step. With both thresholds raised, such arrays come
    from (and return to) the heap, whose pages stay mapped; the cost is up to ``trim_threshold``
    bytes of freed memory kept by the process. Solo runs' arrays are far below the threshold.

    Args:
        mmap_threshold: bytes; allocations below it come from the heap.
        trim_threshold: bytes of free memory at the heap's top kept rather than returned.

    Returns:
        True when glibc's ``mallopt`` took both settings; False elsewhere (musl, another
        allocator preloaded, macOS, Windows), where nothing changes.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:  # the running process's own symbols: glibc's (or musl's) malloc, no library search
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
