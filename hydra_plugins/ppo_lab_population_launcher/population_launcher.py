"""``hydra/launcher=population``: a sweep's jobs trained as populations.

``python train.py -m seed=1,2,3,4 agent.clip_coef=0.1,0.2 hydra/launcher=population`` gives the
job dirs, W&B runs and report of a normal sweep:

1. Each job is set up by Hydra's own ``run_job`` with a task function that only records the
   job (config, run dir, task overrides): ``run_job`` makes ``<sweep dir>/<job num>/`` and its
   ``.hydra/`` files exactly as for any launcher.
2. Jobs whose configs differ only in batchable keys form populations
   (``ppo_lab.commands.sweep.population_groups``, at most ``max_members`` each).
3. Each population is trained by ``ppo_lab.commands.population.run_group``: in this process
   (``n_jobs=1``) or in ``n_jobs`` spawned worker processes, one population per worker at a
   time. The workers start when Hydra sets the launcher up, before the sweeper composes and
   validates the jobs, so their imports (torch, wandb, the trainer) overlap with steps 1-2; this
   process imports no torch for them (``ppo_lab.commands.sweep`` / ``cli``), and keeps its workers
   for every launch of the sweep (the Optuna sweeper launches one batch of trials at a time).
4. One ``JobReturn`` per job, in the sweep's job order: ``return_value`` is the final
   ``eval/episodic_return`` (train.py's objective, which the Optuna sweeper reads), or status
   FAILED with the job's error; a failed member fails only its job.

SIGTERM (or Ctrl-C) stops the sweep as it does train.py's: the training members checkpoint, and
the launcher raises KeyboardInterrupt. Re-running the same sweep with ``hydra.sweep.dir=<its dir>``
resumes it (jobs with checkpoints continue from their latest, as populations again; finished jobs
are not trained again); ``python train.py resume=<job dir>`` resumes one job.
The train.py task function itself is not called (its wiring is repeated here: result line,
failure message, objective). Hydra callbacks see ``on_job_start``/``on_job_end`` while a job is
set up, before it trains.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class _RecordJob:
    """The task function given to ``run_job``: records the job, trains nothing."""

    def __init__(self, job_num: int) -> None:
        self.job_num = job_num
        self.member: Any = None
        self.config: Optional[dict[str, Any]] = None
        #: A finished job's ``summary.json`` (a re-run sweep does not train it again).
        self.done: Optional[dict[str, Any]] = None

    def __call__(self, cfg: DictConfig) -> None:
        from ppo_lab.commands.cli import resolved_config
        from ppo_lab.commands.sweep import Member

        hc = HydraConfig.get()
        self.member = Member(cfg=cfg, run_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task),
                             sweep_dir=hc.sweep.dir, job_num=self.job_num,
                             hydra_cfg=copy.deepcopy(HydraConfig.instance().cfg))
        try:  # resolved while the job's HydraConfig is set (``${hydra:...}`` interpolations)
            self.config = resolved_config(cfg)
        except Exception:  # noqa: BLE001 - an unresolvable config trains alone and fails there
            self.config = None
        # A sweep re-run into its own sweep dir continues it: a job whose dir holds checkpoints
        # resumes from its latest, a finished one (final.pt and summary.json) is not trained again.
        run_dir = Path(self.member.run_dir)
        if any((run_dir / "checkpoints").glob("*.pt")):
            summary = run_dir / "summary.json"
            if summary.is_file() and (run_dir / "checkpoints" / "final.pt").is_file():
                self.done = json.loads(summary.read_text())
            else:
                with open_dict(cfg):
                    cfg.resume = str(run_dir)


class PopulationLauncher(Launcher):
    """Trains the jobs of each launch as populations (see the module docstring)."""

    def __init__(self, max_members: int = 16, n_jobs: int = 1) -> None:
        if max_members < 1 or n_jobs < 1:
            raise ValueError(f"hydra.launcher.max_members={max_members}, n_jobs={n_jobs}; allowed: "
                             "integers >= 1")
        self.max_members = max_members
        self.n_jobs = n_jobs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        #: The worker processes (``n_jobs`` > 1), kept for every launch of the sweep.
        self.pool: Any = None
        self.composed: Optional[_ComposedSweepConfigs] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        # The workers start now: their imports overlap with the sweeper composing and
        # validating the jobs and with this launcher setting them up.
        if self.pool is None:
            self.pool = self._start_workers()
        self.composed = _ComposedSweepConfigs.install(hydra_context.config_loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Setting up {len(job_overrides)} jobs as populations (max_members={self.max_members}, "
                 f"n_jobs={self.n_jobs})")

        if self.pool is None:  # a launch after a failed one: its workers were stopped with it
            self.pool = self._start_workers()
        try:
            return self._launch(job_overrides, initial_job_idx, self.pool)
        except BaseException:
            self.shutdown()  # an interrupted or failed sweep stops here: its workers with it
            raise
        finally:
            if self.composed is not None:
                self.composed.clear()

    def shutdown(self) -> None:
        """Stop the worker processes (the sweep's last launch leaves them to interpreter exit,
        which joins idle workers)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, pool: Any) -> Sequence[JobReturn]:
        from ppo_lab.commands.sweep import population_groups

        assert self.config is not None and self.hydra_context is not None and self.composed is not None
        # 1. Every job's dir and .hydra/ record, by Hydra's run_job.
        returns, records = [], []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.composed.take(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            record = _RecordJob(idx)
            returns.append(run_job(hydra_context=self.hydra_context, task_function=record, config=sweep_config,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            records.append(record)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

        # 2. Populations (of the jobs still to train).
        for record, ret in zip(records, returns):
            if record.done is not None:
                log.info(f"\t#{record.job_num} finished before: {record.member.run_dir}")
                self._finish(ret, record.member, record.done)
        todo = [i for i, r in enumerate(records) if r.done is None]
        groups = [[todo[i] for i in group]
                  for group in population_groups([records[i].config for i in todo], self.max_members, self.n_jobs)]
        for number, group in enumerate(groups):
            log.info(f"Population {number}: jobs {', '.join(f'#{records[i].job_num}' for i in group)}")
        members = [[records[i].member for i in group] for group in groups]

        # 3. Train them; 4. one JobReturn per job.
        try:
            outcomes = self._train(members, pool)
        except KeyboardInterrupt:
            print(f"stopped: to resume the whole sweep, run the same command again with "
                  f"hydra.sweep.dir={self.config.hydra.sweep.dir}", file=sys.stderr, flush=True)
            raise
        for group, outcome in zip(groups, outcomes):
            for index, result in zip(group, outcome):
                self._finish(returns[index], records[index].member, result)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _start_workers(self) -> Any:
        """With ``n_jobs`` > 1: a pool of ``n_jobs`` spawned worker processes, started now (one
        warm-up task each makes the pool spawn them all); else None."""
        if self.n_jobs == 1:
            return None
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init)
        for _ in range(self.n_jobs):  # a busy worker is not idle: each submit spawns one more
            pool.submit(os.getpid)
        return pool

    def _train(self, groups: list[list[Any]], pool: Any = None) -> list[list[Any]]:
        """Each group's outcomes (metrics dict or MemberFailure per member), in group order.

        Raises:
            KeyboardInterrupt: SIGTERM/SIGINT stopped a population (the sweep stops).
        """
        from ppo_lab.commands.sweep import GroupInterrupted

        # A SIGTERM between two members (no trainer's handler installed) stops the sweep too.
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            if pool is None:
                from ppo_lab.commands.population import run_group

                outcomes = []
                for group in groups:
                    outcome = run_group(group)
                    if isinstance(outcome, GroupInterrupted):
                        raise KeyboardInterrupt
                    outcomes.append(outcome)
                return outcomes
            return self._train_in_workers(groups, pool)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _train_in_workers(self, groups: list[list[Any]], pool: Any) -> list[list[Any]]:
        from ppo_lab.commands.sweep import GroupInterrupted

        stopping = []

        def forward(signum: int, frame: Any) -> None:
            # Workers are not in the terminal's way: pass SIGTERM on, so each training
            # member checkpoints and its group returns GroupInterrupted.
            stopping.append(signum)
            for pid in list(getattr(pool, "_processes", {}) or {}):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

        signal.signal(signal.SIGTERM, forward)
        futures = [pool.submit(_run_group_in_worker, group) for group in groups]
        outcomes = []
        try:
            for future in futures:
                outcomes.append(future.result())
        except Exception:
            if stopping:  # a worker ended by the signal between two members
                raise KeyboardInterrupt from None
            raise
        if stopping or any(isinstance(o, GroupInterrupted) for o in outcomes):
            raise KeyboardInterrupt
        return outcomes

    @staticmethod
    def _finish(ret: JobReturn, member: Any, result: Any) -> None:
        """Fill the job's ``JobReturn`` from its population outcome (as train.py's main would)."""
        from ppo_lab.commands.cli import result_line

        if isinstance(result, dict):
            print(result_line(result, member.run_dir), flush=True)
            ret.status = JobStatus.COMPLETED
            ret.return_value = result["eval/episodic_return"]
        else:
            ret.status = JobStatus.FAILED
            ret.return_value = result.error()


class _ComposedSweepConfigs:
    """The job configs the sweeper composed to validate a batch, kept for this launcher.

    Hydra's basic sweeper composes every job of a batch to check it (``validate_batch_is_legal``)
    and drops the result; a launcher then composes each job again (~0.1 s each). Installed on
    the config loader, this remembers each config the sweeper composes (keyed by the master
    config and the job's overrides), and :meth:`take` hands it to the launcher instead of
    composing it again. ``load_sweep_config`` is Hydra's: same arguments, same result; the
    remembered configs are dropped after every launch.
    """

    def __init__(self, load: Any) -> None:
        self.load = load
        #: A job's overrides -> (the master config it was composed from, the job's config).
        self.configs: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}

    @classmethod
    def install(cls, loader: Any) -> "_ComposedSweepConfigs":
        current = loader.load_sweep_config
        if isinstance(current, cls):  # a second setup on the same loader
            return current
        composed = cls(current)
        loader.load_sweep_config = composed
        return composed

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = self.load(master_config=master_config, sweep_overrides=sweep_overrides)
        self.configs[tuple(sweep_overrides)] = (master_config, config)
        return config

    def take(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The job's config: the sweeper's, composed for this job and not used since, else a new one."""
        master, config = self.configs.pop(tuple(sweep_overrides), (None, None))
        if master is not master_config or config is None:
            config = self.load(master_config=master_config, sweep_overrides=sweep_overrides)
        return config

    def clear(self) -> None:
        self.configs.clear()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_group_in_worker(group: Sequence[Any]) -> Any:
    """``ppo_lab.commands.population.run_group`` in a worker process, a KeyboardInterrupt (the
    worker's SIGTERM) as ``GroupInterrupted``. Defined here, so that submitting it pickles this
    module's function and the launcher process never imports the trainer."""
    from ppo_lab.commands.population import run_group
    from ppo_lab.commands.sweep import GroupInterrupted

    try:
        return run_group(group)
    except KeyboardInterrupt:
        return GroupInterrupted(f"interrupted (pid {os.getpid()})")


def _worker_init() -> None:
    """Worker process start: Hydra's resolvers (``${now:...}``) and ppo_lab's configs; the
    training modules and wandb imported now (while the launcher sets up the jobs), not by the
    first member; a SIGTERM between two members (no trainer's handler installed) stops the
    worker's group.

    The objects of those imports (~200k, never garbage) are then frozen out of the garbage
    collector (``gc.freeze``), as train.py does at exit: the worker's collections, the last one
    at its exit included (which the sweep's end waits for), scan only what training made.

    A worker whose launcher process is gone (killed, or ended without shutting the pool down)
    exits: a pool worker does not watch its parent, and would wait for work forever."""
    import gc
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is not None:
        def exit_with_parent() -> None:
            parent.join()  # returns when the launcher process has ended
            os._exit(1)

        threading.Thread(target=exit_with_parent, name="exit-with-launcher", daemon=True).start()

    import wandb  # noqa: F401

    import ppo_lab.commands.population  # noqa: F401
    from ppo_lab.config import register_configs

    setup_globals()
    register_configs()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    gc.freeze()
