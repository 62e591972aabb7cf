"""Population sweeps (``hydra/launcher=population``): the one entry point that trains a population.

The launcher (``hydra_plugins/ppo_lab_population_launcher``) makes every job's dir and ``.hydra/``
record as Hydra does, groups the jobs with ``ppo_lab.commands.sweep.population_groups``, and hands
each group to :func:`run_group` (in its own worker process with ``hydra.launcher.n_jobs`` > 1).

:func:`train_population` prepares each member as its own run and trains them together as one
:class:`~ppo_lab.training.population.Population` (one batched update per round).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

from ppo_lab.commands.cli import main_guard
from ppo_lab.commands.sweep import GroupInterrupted, Member, MemberFailure, _reraise, failure_of
from ppo_lab.commands.train import close_run, prepare_run
from ppo_lab.training.population import Population, population_refusal
from ppo_lab.training.trainer import Trainer, TrainingInterrupted

LOG = logging.getLogger("ppo_lab")


# ---------------------------------------------------------------------------------- training
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
