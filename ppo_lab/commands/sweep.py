"""Population sweeps, the part the launcher process needs: which jobs of a sweep train together
(:func:`population_groups`), the job record a worker trains (:class:`Member`), and the outcomes
that come back (:class:`MemberFailure`, :class:`GroupInterrupted`). No torch import: the launcher
process composes the jobs while its workers import the training code
(``ppo_lab.commands.population`` trains them).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig

from ppo_lab.commands.cli import main_guard

#: Keys whose values may differ between the members of one population (the batched trainer
#: gives each member its own value). Any other key's value defines the population.
BATCHABLE_KEYS = frozenset({
    "seed", "agent.learning_rate", "agent.clip_coef", "agent.ent_coef", "agent.vf_coef",
    "agent.gamma", "agent.gae_lambda", "agent.max_grad_norm", "agent.target_kl", "agent.kl_beta",
    "agent.kl_target",
})
#: Keys that name a run but never change what it trains (``hydra`` covers everything under it).
IDENTITY_KEYS = frozenset({"run_name", "hydra"})


# ---------------------------------------------------------------------------------- grouping
def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"agent": {"gamma": 0.99}}`` -> ``{"agent.gamma": 0.99}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def is_batchable(key: str) -> bool:
    """Whether the dotted ``key`` may differ inside one population."""
    return key in BATCHABLE_KEYS or key.split(".")[0] in IDENTITY_KEYS


def batch_signature(config: Mapping[str, Any]) -> str:
    """What jobs of one population share: every non-batchable key's value, as sorted JSON."""
    shared = {k: v for k, v in flatten(config).items() if not is_batchable(k)}
    return json.dumps(shared, sort_keys=True, default=str)


def population_groups(configs: Sequence[Optional[Mapping[str, Any]]], max_members: int,
                      n_jobs: int = 1) -> list[list[int]]:
    """Split a sweep's jobs into populations.

    Args:
        configs: each job's resolved config (``resolved_config(cfg)``: plain data, aliases
            applied), in job order; ``None`` for a job that cannot be batched (its config did
            not resolve), which becomes a population of its own.
        max_members: the most jobs in one population; a larger group is split into chunks.
        n_jobs: populations trained at once (one process each, one core each); while there are
            fewer populations than that, the largest is halved, so every worker has one.

    Returns:
        Job indices (into ``configs``) per population: jobs whose configs differ only in
        :data:`BATCHABLE_KEYS` (and ``run_name``, ``hydra.*``) share one, in job order, in chunks
        of at most ``max_members``; populations are ordered by their first job.

    Raises:
        ValueError: ``max_members`` < 1.
    """
    if max_members < 1:
        raise ValueError(f"hydra.launcher.max_members={max_members}; allowed: an integer >= 1")
    by_signature: dict[str, list[int]] = {}
    groups: list[list[int]] = []
    for index, config in enumerate(configs):
        if config is None:
            groups.append([index])
            continue
        by_signature.setdefault(batch_signature(config), []).append(index)
    for members in by_signature.values():
        groups.extend(members[i:i + max_members] for i in range(0, len(members), max_members))
    while len(groups) < n_jobs and any(len(g) > 1 for g in groups):
        largest = max(groups, key=len)
        groups.remove(largest)
        half = (len(largest) + 1) // 2
        groups += [largest[:half], largest[half:]]
    return sorted(groups, key=lambda group: group[0])


# ---------------------------------------------------------------------------------- jobs
@dataclass
class Member:
    """One job of a population: what :func:`ppo_lab.commands.train.train` takes, plus the job's
    Hydra config (``HydraConfig`` of the job, for ``${hydra:...}`` and its log file)."""

    cfg: DictConfig
    run_dir: str
    overrides: list[str]
    sweep_dir: Optional[str]
    job_num: int = 0
    hydra_cfg: Optional[DictConfig] = None


# ---------------------------------------------------------------------------------- outcomes
@dataclass
class MemberFailure:
    """A member's failure as picklable data (it crosses from a worker process to the launcher)."""

    job_num: int
    run_dir: str
    exit_status: Optional[int]  # main_guard's status (2 bad input, 1 diverged); None: unexpected
    message: str

    def error(self) -> RuntimeError:
        """The exception the job's ``JobReturn`` carries (as train.py's main raises it)."""
        if self.exit_status is not None:
            return RuntimeError(f"job {self.job_num} failed (exit status {self.exit_status}); "
                                f"run dir: {self.run_dir}")
        return RuntimeError(f"job {self.job_num} failed; run dir: {self.run_dir}\n{self.message}")


@dataclass
class GroupInterrupted:
    """SIGTERM/SIGINT stopped a population (the interrupted member's checkpoint is saved)."""

    message: str


def _reraise(exc: BaseException) -> None:
    raise exc


def failure_of(exc: BaseException, member: Member) -> MemberFailure:
    """Report ``exc`` as a basic-launcher job would (``main_guard``'s one line on stderr:
    ``error: ...`` / ``stopped: ...``), as a :class:`MemberFailure`."""
    try:
        main_guard(_reraise, exc)
    except SystemExit as exit_:
        return MemberFailure(member.job_num, member.run_dir, int(exit_.code), str(exc))
    except BaseException:  # noqa: BLE001 - not a kind main_guard knows: keep its traceback
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return MemberFailure(member.job_num, member.run_dir, None, text)
    raise AssertionError("unreachable")  # pragma: no cover
