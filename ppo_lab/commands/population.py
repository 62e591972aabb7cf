"""Population sweeps (``hydra/launcher=population``): which jobs of a sweep train together, and
the one entry point that trains a population.

The launcher (``hydra_plugins/ppo_lab_population_launcher``) makes every job's dir and ``.hydra/``
record as Hydra does, groups the jobs with :func:`population_groups`, and hands each group to
:func:`train_population` (in its own worker process with ``hydra.launcher.n_jobs`` > 1).

:func:`train_population` prepares each member as its own run and trains them together as one
:class:`~ppo_lab.training.population.Population` (one batched update per round).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig

from ppo_lab.commands.train import close_run, main_guard, prepare_run
from ppo_lab.training.population import Population, population_refusal
from ppo_lab.training.trainer import Trainer, TrainingInterrupted

LOG = logging.getLogger("ppo_lab")

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


# ---------------------------------------------------------------------------------- training
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


def train_population(members: Sequence[Member]) -> list[Union[dict[str, float], BaseException]]:
    """Train a population; one entry per member, in order: its final metrics (what
    :func:`~ppo_lab.commands.train.train` returns) or the exception that ended it.

    Each member is prepared as its own run (:func:`~ppo_lab.commands.train.prepare_run`, in its
    job's Hydra context: same config, seed, network init, run dir, checkpoints, metrics and W&B
    run as the basic launcher's job), then all of them train as one
    :class:`~ppo_lab.training.population.Population` (lockstep rounds, one batched update).
    Members the population cannot stack (a recurrent core, a CNN, a user's network; the warning
    says why) train one after another, each a population of one.

    A member's failure (bad config, divergence, an env error) is returned in its place; the
    other members go on. While they train, each member's log records go to its job's log file.

    Raises:
        TrainingInterrupted: SIGTERM/SIGINT (every training member saved a checkpoint first).
    """
    results: list[Union[dict[str, float], BaseException, None]] = [None] * len(members)
    prepared: list[tuple[int, Trainer]] = []
    try:
        for k, member in enumerate(members):
            with job_context(member):
                try:
                    prepared.append((k, prepare_run(member.cfg, member.run_dir, member.overrides, member.sweep_dir)))
                except Exception as exc:  # noqa: BLE001 - a member's failure is its own result
                    results[k] = exc
        groups = [prepared] if prepared else []
        if len(prepared) > 1:
            reason = population_refusal([t for _, t in prepared])
            if reason:
                LOG.warning("population of %d jobs cannot be batched (%s): its members train one at a time",
                            len(prepared), reason)
                groups = [[entry] for entry in prepared]
        for group in groups:
            population = Population([t for _, t in group])
            with member_logs(population, [members[k] for k, _ in group]):
                outcomes = population.fit()
            for (k, trainer), outcome in zip(group, outcomes):
                results[k] = outcome
                close_run(trainer, 0 if isinstance(outcome, dict) else 1)
    finally:
        for k, trainer in prepared:
            if results[k] is None:  # interrupted: close what is still open
                close_run(trainer, 1)
    return [r if r is not None else RuntimeError("member did not train") for r in results]


@contextlib.contextmanager
def member_logs(population: Population, members: Sequence[Member]) -> Iterator[None]:
    """While a population trains: each member's ``ppo_lab`` log records go to its job's log file
    (``<run dir>/<job name>.log``, as Hydra's job logging writes it), routed by which member the
    population is stepping."""
    logger = logging.getLogger("ppo_lab")
    handlers = []
    if len(members) > 1:
        for trainer, member in zip(population.members, members):
            if member.hydra_cfg is None:
                continue
            handler = logging.FileHandler(Path(member.run_dir) / f"{member.hydra_cfg.hydra.job.name}.log")
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            handler.addFilter(lambda record, t=trainer: population.current is t)
            logger.addHandler(handler)
            handlers.append(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def job_context(member: Member) -> Iterator[None]:
    """While one member trains: its HydraConfig, its job log file, ``hydra.job.env_set`` and (with
    ``hydra.job.chdir=true``) its run dir as working dir, as Hydra's ``run_job`` sets them around
    a basic-launcher job."""
    if member.hydra_cfg is None:
        yield
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log, env_override

    hydra_config = HydraConfig.instance()
    previous, cwd = hydra_config.cfg, os.getcwd()
    hydra_config.set_config(member.hydra_cfg)
    try:
        if member.hydra_cfg.hydra.job.chdir:
            os.chdir(member.run_dir)
        configure_log(member.hydra_cfg.hydra.job_logging, member.hydra_cfg.hydra.verbose)
        with env_override(dict(member.hydra_cfg.hydra.job.env_set)):
            yield
    finally:
        hydra_config.cfg = previous
        os.chdir(cwd)


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


def run_group(members: Sequence[Member]) -> Union[list[Union[dict[str, float], MemberFailure]], GroupInterrupted]:
    """:func:`train_population` with every outcome as picklable data: metrics, a
    :class:`MemberFailure` per failed member, or :class:`GroupInterrupted`."""
    try:
        results = train_population(members)
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        if isinstance(exc, TrainingInterrupted):
            with contextlib.suppress(SystemExit):
                main_guard(_reraise, exc)  # "stopped: SIGTERM received ... Resume with: ..."
        return GroupInterrupted(str(exc) or type(exc).__name__)
    return [r if isinstance(r, dict) else failure_of(r, m) for r, m in zip(results, members)]


def run_group_in_worker(members: Sequence[Member]) -> Union[list[Union[dict[str, float], MemberFailure]], GroupInterrupted]:
    """:func:`run_group` in a worker process; KeyboardInterrupt becomes :class:`GroupInterrupted`."""
    try:
        return run_group(members)
    except KeyboardInterrupt:
        return GroupInterrupted(f"interrupted (pid {os.getpid()})")
