"""Sweep report: compare the configs of a Hydra multirun from the jobs' local files.

``python -m ppo_lab.report multirun_outputs/<date>/<time>`` reads every job dir of the sweep
(``.hydra/overrides.yaml``, ``config.yaml``, ``metrics.jsonl``, ``summary.json``; never the W&B
server), groups the jobs into configs (a job's overrides minus ``seed``), and writes into the sweep
dir:

* ``report.md``: one row per config with the number of seeds, mean, std and interquartile mean
  (IQM) of the final evaluation return, with a percentile-bootstrap 95% confidence interval of the
  IQM (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"); failed jobs (no
  ``summary.json``) and jobs the sweep never started are listed, never dropped;
* ``learning_curves.png``: per config, the mean training return (``charts/episodic_return``)
  over seeds against ``global_step``, each seed interpolated onto a common grid, with a bootstrap
  95% CI band of the mean; one panel per environment.

The table is printed too. A missing, empty or non-sweep dir is one ``error: ...`` line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

#: Final-performance metric of a job, read from its ``summary.json``.
SCORE_KEY = "eval/episodic_return"
#: Best evaluation during training, read from ``summary.json``.
BEST_KEY = "eval/best_episodic_return"
#: Learning-curve metric, read from ``metrics.jsonl``.
CURVE_KEY = "charts/episodic_return"
#: Points of the common ``global_step`` grid the learning curves are interpolated onto.
GRID_POINTS = 200
#: Resamples of each bootstrap confidence interval.
BOOTSTRAP_RESAMPLES = 2000


class SweepError(ValueError):
    """The given path is not a sweep dir that a report can be made from."""


@dataclass
class Job:
    """One job (run) of a sweep, as found in its dir.

    Attributes:
        num: Hydra's job number (``hydra.job.num``), the job dir's name.
        path: the job dir.
        overrides: the job's command-line overrides (``.hydra/overrides.yaml``).
        env_id: gymnasium id from the resolved ``config.yaml`` (``?`` if unreadable).
        summary: ``summary.json`` (final evaluation), or None when the job failed.
        steps: ``global_step`` of each logged training return, shape ``(n,)``, in env steps.
        returns: ``charts/episodic_return`` at those steps, shape ``(n,)``.
        started: False for a job the sweep defines but that has no dir (the sweep stopped first).
    """

    num: int
    path: Path
    overrides: list[str]
    env_id: str = "?"
    summary: Optional[dict[str, Any]] = None
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    started: bool = True

    @property
    def failed(self) -> bool:
        """True when the job left no ``summary.json`` (it raised, was killed, never started or is
        still running)."""
        return self.summary is None

    @property
    def score(self) -> Optional[float]:
        """Final mean evaluation return, or None (failed job, or a non-finite value)."""
        return _finite(self.summary.get(SCORE_KEY)) if self.summary else None


@dataclass
class ConfigResult:
    """The jobs of one config (same overrides but ``seed``), aggregated over seeds.

    Attributes:
        key: the config's overrides minus ``seed``, in command-line order.
        label: the overrides that vary across the sweep (what tells configs apart).
        jobs: its jobs, finished and failed.
        scores: final evaluation return of each finished job, shape ``(n_seeds,)``.
        mean: mean of ``scores`` (nan without any).
        std: sample standard deviation of ``scores`` (ddof=1; nan below two seeds).
        iqm: interquartile mean of ``scores`` (``scipy.stats.trim_mean(scores, 0.25)``).
        iqm_ci: percentile-bootstrap 95% CI of the IQM ((nan, nan) below two seeds).
        best: mean over seeds of the best evaluation return during training.
    """

    key: tuple[str, ...]
    label: str
    jobs: list[Job]
    scores: np.ndarray
    mean: float
    std: float
    iqm: float
    iqm_ci: tuple[float, float]
    best: float

    @property
    def failed(self) -> list[Job]:
        """The config's jobs without ``summary.json``."""
        return [job for job in self.jobs if job.failed]


@dataclass
class Sweep:
    """A sweep dir's jobs.

    Attributes:
        path: the sweep dir.
        jobs: by job number: the job dirs found, plus (basic sweeper) the jobs that the sweep
            defines but never started, with ``started=False``.
    """

    path: Path
    jobs: list[Job]


def _finite(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_job(path: Path) -> Job:
    """Read one job dir: overrides, env id, summary (if any) and training-return curve.

    Args:
        path: a job dir holding ``.hydra/overrides.yaml``.

    Returns:
        The job; ``summary`` is None when ``summary.json`` is missing or unreadable.
    """
    overrides = [str(o) for o in (_read_yaml(path / ".hydra" / "overrides.yaml") or [])]
    job = Job(num=int(path.name) if path.name.isdigit() else -1, path=path, overrides=overrides)
    for name in ("config.yaml", ".hydra/config.yaml"):
        try:
            job.env_id = str(_read_yaml(path / name)["env"]["id"])
            break
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            continue
    try:
        job.summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        job.summary = None
    steps, returns = [], []
    try:
        with (path / "metrics.jsonl").open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a killed job
                    continue
                value = _finite(row.get(CURVE_KEY))
                step = _finite(row.get("global_step"))
                if value is not None and step is not None:
                    steps.append(step)
                    returns.append(value)
    except OSError:
        pass
    job.steps, job.returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    return job


def _expected_jobs(sweep_dir: Path) -> Optional[list[list[str]]]:
    """Override lists of every job a basic-sweeper multirun defines (None for other sweepers)."""
    try:
        hydra_cfg = _read_yaml(sweep_dir / "multirun.yaml")["hydra"]
        if not str(hydra_cfg["sweeper"]["_target_"]).endswith("BasicSweeper"):
            return None
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(hydra_cfg["overrides"]["task"]))
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
        return [list(job) for batch in batches for job in batch]
    except Exception:  # an unreadable or foreign multirun.yaml: report what is on disk
        return None


def load_sweep(sweep_dir: str | Path) -> Sweep:
    """Find and read every job dir (``<sweep_dir>/<job num>/.hydra/overrides.yaml``).

    Args:
        sweep_dir: a Hydra sweep dir, e.g. ``multirun_outputs/<date>/<time>``.

    Raises:
        SweepError: the dir is missing, is a single run dir, or holds no job dirs.
    """
    path = Path(sweep_dir)
    if not path.is_dir():
        raise SweepError(f"{path} does not exist or is not a directory")
    if (path / ".hydra" / "overrides.yaml").is_file():
        raise SweepError(
            f"{path} is a single run dir, not a sweep dir; pass the dir of a multirun "
            "(multirun_outputs/<date>/<time>)"
        )
    job_dirs = sorted(
        (p for p in path.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not job_dirs:
        raise SweepError(
            f"{path} is not a sweep dir: no job dirs with .hydra/overrides.yaml in it "
            "(expected multirun_outputs/<date>/<time>/<job num>/)"
        )
    jobs = [load_job(p) for p in job_dirs]
    seen = {tuple(job.overrides) for job in jobs}
    for num, overrides in enumerate(_expected_jobs(path) or []):
        if tuple(overrides) not in seen:
            jobs.append(Job(num=num, path=path / str(num), overrides=overrides, started=False))
    return Sweep(path=path, jobs=sorted(jobs, key=lambda job: job.num))


def config_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's config: its overrides without the seed (``seed=``, ``+seed=``, ``++seed=``)."""
    return tuple(o for o in overrides if o.lstrip("+").split("=", 1)[0] != "seed")


def iqm(values: np.ndarray, axis: int = 0) -> Any:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    from scipy.stats import trim_mean

    return trim_mean(values, 0.25, axis=axis)


def bootstrap_ci(
    values: np.ndarray, statistic: Any = iqm, confidence: float = 0.95, seed: int = 0
) -> tuple[Any, Any]:
    """Percentile-bootstrap confidence interval of ``statistic`` over axis 0 of ``values``.

    Args:
        values: samples (one per seed), shape ``(n_seeds,)`` or ``(n_seeds, n_points)``.
        statistic: a vectorized statistic ``f(x, axis)``.
        confidence: confidence level.
        seed: seed of the resampling, so a report is reproducible.

    Returns:
        (low, high), each a float or an array of shape ``(n_points,)``; nan below two samples.
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if values.shape[0] < 2:
        nan = np.full(values.shape[1:], np.nan) if values.ndim > 1 else math.nan
        return nan, nan
    result = bootstrap(
        (values,), statistic, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile", axis=0, vectorized=True, rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return low, high


def _label(key: tuple[str, ...], common: set[str]) -> str:
    varying = [o for o in key if o not in common]
    return ", ".join(varying) if varying else "(all jobs)"


def common_overrides(jobs: Sequence[Job]) -> list[str]:
    """The overrides (seed aside) that every job of the sweep shares, in command-line order."""
    keys = [config_key(job.overrides) for job in jobs]
    shared = set(keys[0]).intersection(*keys[1:]) if keys else set()
    return [o for o in keys[0] if o in shared] if keys else []


def aggregate(jobs: Sequence[Job]) -> list[ConfigResult]:
    """Group jobs by config (overrides minus seed) and aggregate final returns over seeds.

    Args:
        jobs: the sweep's jobs.

    Returns:
        One result per config, in the order of each config's first job.
    """
    groups: dict[tuple[str, ...], list[Job]] = defaultdict(list)
    for job in jobs:
        groups[config_key(job.overrides)].append(job)
    common = set(common_overrides(jobs))
    results = []
    for key, members in groups.items():
        scores = np.asarray([j.score for j in members if j.score is not None], dtype=float)
        bests = [b for b in (_finite(j.summary.get(BEST_KEY)) for j in members if j.summary) if b is not None]
        results.append(ConfigResult(
            key=key,
            label=_label(key, common),
            jobs=members,
            scores=scores,
            mean=float(np.mean(scores)) if scores.size else math.nan,
            std=float(np.std(scores, ddof=1)) if scores.size > 1 else math.nan,
            iqm=float(iqm(scores)) if scores.size else math.nan,
            iqm_ci=tuple(float(v) for v in bootstrap_ci(scores)) if scores.size else (math.nan, math.nan),
            best=float(np.mean(bests)) if bests else math.nan,
        ))
    return results


def _fmt(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.1f}"


def markdown_table(results: Sequence[ConfigResult]) -> str:
    """The comparison table, one row per config, in GitHub markdown."""
    lines = [
        f"| config | seeds | failed | mean {SCORE_KEY} | std | IQM | IQM 95% CI | mean {BEST_KEY} |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        ci = "–" if not all(map(math.isfinite, r.iqm_ci)) else f"[{r.iqm_ci[0]:.1f}, {r.iqm_ci[1]:.1f}]"
        lines.append(
            f"| {r.label} | {r.scores.size} | {len(r.failed)} | {_fmt(r.mean)} | {_fmt(r.std)} "
            f"| {_fmt(r.iqm)} | {ci} | {_fmt(r.best)} |"
        )
    return "\n".join(lines)


def interpolate_curves(jobs: Sequence[Job], points: int = GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Put the training-return curves of several seeds on one ``global_step`` grid.

    The grid spans the steps every curve covers (from the latest first point to the earliest last
    point), so nothing is extrapolated.

    Args:
        jobs: jobs with at least one logged training return each.
        points: grid size.

    Returns:
        (grid of shape ``(points,)`` in env steps, returns of shape ``(n_jobs, points)``).
    """
    start = max(float(job.steps[0]) for job in jobs)
    stop = min(float(job.steps[-1]) for job in jobs)
    grid = np.linspace(start, stop, points) if stop > start else np.asarray([start])
    return grid, np.stack([np.interp(grid, job.steps, job.returns) for job in jobs])


def plot_learning_curves(results: Sequence[ConfigResult], path: Path) -> Optional[Path]:
    """Draw mean training return per config with a bootstrap 95% CI band; one panel per env.

    Args:
        results: the aggregated configs.
        path: the PNG to write.

    Returns:
        ``path``, or None when no job logged a training return.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_env: dict[str, list[tuple[str, list[Job]]]] = defaultdict(list)
    for r in results:
        with_curve = [j for j in r.jobs if j.steps.size]
        if with_curve:
            by_env[with_curve[0].env_id].append((r.label, with_curve))
    if not by_env:
        return None
    fig, axes = plt.subplots(1, len(by_env), figsize=(6 * len(by_env), 4), squeeze=False)
    for ax, (env_id, curves) in zip(axes[0], sorted(by_env.items())):
        for label, jobs in curves:
            grid, values = interpolate_curves(jobs)
            mean = values.mean(axis=0)
            (line,) = ax.plot(grid, mean, label=f"{label} (n={len(jobs)})")
            low, high = bootstrap_ci(values, statistic=np.mean)
            if len(jobs) > 1:
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(env_id)
        ax.set_xlabel("global_step (env steps)")
        ax.set_ylabel(CURVE_KEY)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("mean over seeds, 95% bootstrap CI", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    sweep_dir: str | Path, out_dir: Optional[str | Path] = None
) -> tuple[Sweep, str, list[Path]]:
    """Make the sweep report: ``report.md`` and ``learning_curves.png`` in ``out_dir``.

    Args:
        sweep_dir: the multirun's sweep dir.
        out_dir: where to write (default: the sweep dir).

    Returns:
        (the sweep as read, the markdown table, the files written).

    Raises:
        SweepError: not a sweep dir (see :func:`load_sweep`).
    """
    sweep = load_sweep(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep.path
    out.mkdir(parents=True, exist_ok=True)
    results = aggregate(sweep.jobs)
    table = markdown_table(results)
    written = []
    png = plot_learning_curves(results, out / "learning_curves.png")
    common = common_overrides(sweep.jobs)
    lines = [
        f"# Sweep report: {sweep.path}",
        "",
        f"{len(sweep.jobs)} jobs, {len(results)} configs. Final performance: `{SCORE_KEY}` "
        "from each job's summary.json; IQM = interquartile mean over seeds "
        "(scipy.stats.trim_mean, 25%), CI = percentile bootstrap.",
        "",
        f"Overrides shared by every job: `{' '.join(common)}`" if common else "No override is shared by every job.",
        "",
        table,
    ]
    failed = [j for j in sweep.jobs if j.failed]
    if failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {j.num}: {_failure(j)}; overrides: `{' '.join(j.overrides)}`" for j in failed]
    if png is not None:
        lines += ["", "## Learning curves", "", f"![learning curves]({png.name})"]
        written.append(png)
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.insert(0, report)
    return sweep, table, written


def _failure(job: Job) -> str:
    if not job.started:
        return "never started (the sweep stopped before it)"
    return f"no summary.json in {job.path} (see its train.log)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m ppo_lab.report <sweep dir> [--out DIR]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ppo_lab.report",
        description="Compare the configs of a sweep (multirun_outputs/<date>/<time>) from its job dirs.",
    )
    parser.add_argument("sweep_dir", help="the sweep dir, e.g. multirun_outputs/2026-11-23/15-22-43")
    parser.add_argument("--out", default=None, help="where to write report.md and learning_curves.png "
                        "(default: the sweep dir)")
    args = parser.parse_args(argv)
    try:
        sweep, table, written = write_report(args.sweep_dir, args.out)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    for job in (j for j in sweep.jobs if j.failed):
        print(f"failed: job {job.num}: {_failure(job)}; overrides: {' '.join(job.overrides)}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
