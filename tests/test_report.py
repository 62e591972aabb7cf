"""``python -m ppo_lab.report <sweep dir>``: the table and plot match the jobs' own files; failed
and never-started jobs are listed; a wrong dir is one error line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_script
from scipy.stats import trim_mean

from ppo_lab.commands import report

TINY = ["debug=fast", "agent.num_envs=2", "agent.num_steps=64", "total_timesteps=256", "eval_episodes=2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppo_lab.report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the printed markdown table, by config label: [seeds, failed, mean, std, IQM, CI, best]."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 8 and cells[0] not in ("config", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def make_job(sweep: Path, num: int, overrides: list[str], summary: dict | None,
             curve: list[tuple[int, float]] = (), env_id: str = "CartPole-v1") -> Path:
    """A job dir as train.py leaves it (summary None: the job failed)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "config.yaml").write_text(yaml.safe_dump({"env": {"id": env_id}, "overrides": overrides}))
    (job / "metrics.jsonl").write_text("".join(
        json.dumps({"global_step": s, "charts/episodic_return": r}) + "\n" for s, r in curve))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


def test_report_of_a_real_sweep_matches_the_job_files(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", ["-m", *TINY, "agent.clip=0.1,0.2", "seed=1,2", f"hydra.sweep.dir={sweep}"],
                      cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_report(str(sweep), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    # The alias typed (agent.clip) is recorded as the key the run used (agent.clip_coef).
    assert set(rows) == {"agent.clip_coef=0.1", "agent.clip_coef=0.2"}
    for label, cells in rows.items():
        jobs = [j for j in sweep.iterdir() if j.name.isdigit()
                and label in yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text())]
        returns = np.array([json.loads((j / "summary.json").read_text())["eval/episodic_return"] for j in jobs])
        assert len(returns) == 2
        assert cells[:5] == ["2", "0", f"{returns.mean():.1f}", f"{returns.std(ddof=1):.1f}",
                             f"{trim_mean(returns, 0.25):.1f}"]
    md = (sweep / "report.md").read_text()
    assert all(f"| {label} |" in md for label in rows)
    assert "![learning curves](learning_curves.png)" in md
    png = sweep / "learning_curves.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


def test_statistics_are_iqm_with_bootstrap_ci_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    scores = [10.0, 20.0, 30.0, 40.0, 1000.0, 25.0, 35.0, 45.0]  # one outlier seed
    for i, score in enumerate(scores):
        make_job(sweep, i, ["agent.clip=0.2", f"seed={i}"],
                 {"eval/episodic_return": score, "eval/best_episodic_return": score + 1},
                 curve=[(128, 1.0), (256, score)])
    (result,) = report.aggregate(report.load_sweep(sweep).jobs)
    assert result.label == "(all jobs)" and result.scores.size == 8
    assert result.mean == pytest.approx(np.mean(scores))
    assert result.std == pytest.approx(np.std(scores, ddof=1))
    assert result.iqm == pytest.approx(np.mean(sorted(scores)[2:6]))  # middle 50%: 25, 30, 35, 40
    low, high = result.iqm_ci
    assert min(scores) <= low < result.iqm < high <= max(scores)
    assert result.best == pytest.approx(np.mean(scores) + 1)


def test_curves_are_interpolated_onto_the_steps_all_seeds_cover():
    a = report.Job(0, Path("a"), [], steps=np.array([0.0, 100.0]), returns=np.array([0.0, 10.0]))
    b = report.Job(1, Path("b"), [], steps=np.array([50.0, 150.0]), returns=np.array([0.0, 100.0]))
    grid, values = report.interpolate_curves([a, b], points=3)
    np.testing.assert_allclose(grid, [50.0, 75.0, 100.0])
    np.testing.assert_allclose(values, [[5.0, 7.5, 10.0], [0.0, 25.0, 50.0]])


def test_failed_and_never_started_jobs_are_listed(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
        "overrides": {"task": ["env=cartpole,acrobot", "seed=1,2"]},
    }}))
    make_job(sweep, 0, ["env=cartpole", "seed=1"], {"eval/episodic_return": 100.0}, curve=[(8, 1.0), (16, 2.0)])
    make_job(sweep, 1, ["env=cartpole", "seed=2"], {"eval/episodic_return": 200.0}, curve=[(8, 1.0), (16, 3.0)])
    make_job(sweep, 2, ["env=acrobot", "seed=1"], None, env_id="Acrobot-v1")  # raised: no summary
    out = run_report(str(sweep), cwd=tmp_path)  # job 3 (acrobot, seed=2) never started
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert rows["env=cartpole"][:3] == ["2", "0", "150.0"]
    assert rows["env=acrobot"][:3] == ["0", "2", "–"]
    assert "failed: job 2: no summary.json" in out.stderr
    assert "failed: job 3: never started" in out.stderr and "env=acrobot seed=2" in out.stderr
    md = (sweep / "report.md").read_text()
    assert "## Failed jobs" in md and "`env=acrobot seed=1`" in md and "`env=acrobot seed=2`" in md


@pytest.mark.parametrize("case", ["missing", "empty", "single_run", "file"])
def test_a_dir_that_is_not_a_sweep_is_one_error_line(tmp_path, case):
    target = tmp_path / "target"
    if case == "empty":
        target.mkdir()
    elif case == "single_run":
        make_job(tmp_path, 0, ["seed=1"], {"eval/episodic_return": 1.0})
        target = tmp_path / "0"
    elif case == "file":
        target.write_text("x")
    out = run_report(str(target), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0]
    assert out.stdout == ""
