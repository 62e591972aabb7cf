"""``hydra/launcher=population``: which jobs form a population, and a population sweep gives the
job dirs, numbers (to float32 rounding) and report of a basic-launcher sweep.

Sweeps are subprocesses (``python train.py -m ... hydra/launcher=population``) with a tiny budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, compose_cfg, run_script, sigterm_once_training

from ppo_lab.commands.cli import resolved_config
from ppo_lab.commands.sweep import batch_signature, population_groups

TINY = ["logger=none", "progress=false", "total_timesteps=512", "agent.num_envs=2", "agent.num_steps=64",
        "eval_episodes=1"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def sweep(sweep_dir: Path, *args: str, timeout: float = 120):
    return run_script("train.py", ["-m", *TINY, *args, f"hydra.sweep.dir={sweep_dir}"], cwd=sweep_dir.parent,
                      timeout=timeout)


def rows(job: Path) -> list[dict]:
    """metrics.jsonl without wall-clock entries."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (job / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path, exact: bool = False) -> None:
    """Same final weights: bit for bit (``exact``), or to float32 rounding (a member trained in a
    batched population against the same job alone)."""
    wa = torch.load(a / "checkpoints" / "final.pt", weights_only=False)["model"]
    wb = torch.load(b / "checkpoints" / "final.pt", weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0 if exact else 1e-4, atol=0 if exact else 1e-5, msg=key)


def assert_same_rows(a: Path, b: Path) -> None:
    """The same metrics rows, floats to float32 rounding."""
    ra, rb = rows(a), rows(b)
    assert [r.keys() for r in ra] == [r.keys() for r in rb] and ra
    for x, y in zip(ra, rb):
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-3, abs=1e-5), key


# ---------------------------------------------------------------------------------- grouping
def base(**agent) -> dict:
    return {"seed": 1, "run_name": None, "total_timesteps": 512, "env": {"id": "CartPole-v1"},
            "agent": {"num_envs": 4, "clip_coef": 0.2, "learning_rate": 2.5e-4, **agent}}


def test_seeds_and_batchable_hyperparameters_form_one_population():
    configs = [{**base(clip_coef=c, learning_rate=lr, ent_coef=e), "seed": s, "run_name": f"r{s}"}
               for s in (1, 2) for c in (0.1, 0.2) for lr in (1e-3, 3e-4) for e in (0.0, 0.01)]
    assert population_groups(configs, max_members=16) == [list(range(16))]


def test_env_num_envs_or_budget_split_populations_in_job_order():
    configs = [base(), {**base(), "env": {"id": "Acrobot-v1"}}, base(num_envs=8), base(clip_coef=0.3),
               {**base(), "total_timesteps": 1024}, {**base(), "seed": 5}]
    assert population_groups(configs, max_members=16) == [[0, 3, 5], [1], [2], [4]]


def test_max_members_chunks_a_population_in_job_order():
    configs = [{**base(), "seed": s} for s in range(7)]
    assert population_groups(configs, max_members=3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="max_members=0"):
        population_groups(configs, max_members=0)


def test_n_jobs_halves_the_largest_population_until_every_worker_has_one():
    configs = [{**base(), "seed": s} for s in range(1, 9)] + [{**base(num_envs=8), "seed": 1}]
    assert population_groups(configs[:8], max_members=16, n_jobs=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert population_groups(configs, max_members=16, n_jobs=3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert population_groups(configs[:2], max_members=16, n_jobs=4) == [[0], [1]]


def test_a_job_that_batches_with_none_is_a_single_member_population():
    configs = [base(), base(num_envs=2), None, base()]
    assert population_groups(configs, max_members=16) == [[0, 3], [1], [2]]


def test_composed_configs_differ_only_in_batchable_keys_and_hydra():
    a = resolved_config(compose_cfg(["seed=1", "agent.clip=0.1"]))  # alias applied before comparing
    b = resolved_config(compose_cfg(["seed=2", "agent.clip_coef=0.3", "run_name=b"]))
    c = resolved_config(compose_cfg(["agent.num_steps=64"]))
    assert batch_signature(a) == batch_signature(b) != batch_signature(c)
    assert batch_signature({**a, "hydra": {"job": {"num": 3}}}) == batch_signature(a)


# ---------------------------------------------------------------------------------- sweeps
@pytest.fixture(scope="module")
def population_sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("population") / "sweep"
    proc = sweep(sweep_dir, "seed=1,2", "agent.clip_coef=0.1,0.2", "hydra/launcher=population")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Population 0: jobs #0, #1, #2, #3" in proc.stdout + proc.stderr
    return sweep_dir


def test_population_sweep_gives_every_job_its_dir_and_the_report_reads_it(population_sweep, tmp_path):
    jobs = job_dirs(population_sweep)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    expected = [["seed=1", "agent.clip_coef=0.1"], ["seed=1", "agent.clip_coef=0.2"],
                ["seed=2", "agent.clip_coef=0.1"], ["seed=2", "agent.clip_coef=0.2"]]
    for job, want in zip(jobs, expected):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert set(want) <= set(overrides)
        assert (job / ".hydra" / "config.yaml").is_file() and (job / ".hydra" / "hydra.yaml").is_file()
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert config["overrides"] == overrides
        assert (config["seed"], config["agent"]["clip_coef"]) == (int(want[0][5:]), float(want[1][16:]))
        assert (job / "checkpoints" / "final.pt").is_file()
        assert json.loads((job / "summary.json").read_text())["global_step"] == 512
        assert rows(job)
    report = subprocess.run([sys.executable, "-m", "ppo_lab.report", str(population_sweep)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "agent.clip_coef=0.1" in report.stdout and "agent.clip_coef=0.2" in report.stdout


def test_a_member_trains_exactly_as_the_same_job_with_the_basic_launcher(population_sweep, tmp_path):
    basic = tmp_path / "basic"
    proc = sweep(basic, "seed=2", "agent.clip_coef=0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    member = population_sweep / "2"  # seed=2 agent.clip_coef=0.1, trained beside 3 others
    assert_same_weights(member, basic / "0")
    assert_same_rows(member, basic / "0")


#: ``python train.py`` run by a wrapper that reports, at exit, whether the launcher process
#: imported torch (spawned workers import the wrapper as ``__mp_main__``: the guard skips it).
TORCH_REPORT = """
import atexit, runpy, sys
if __name__ == "__main__":
    atexit.register(lambda: print("launcher imported torch:", "torch" in sys.modules, flush=True))
    sys.argv = [{train!r}] + sys.argv[1:]
    sys.path.insert(0, {root!r})
    runpy.run_path({train!r}, run_name="__main__")
"""


def test_n_jobs_2_trains_populations_in_workers_with_the_same_numbers(population_sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    wrapper = tmp_path / "train_reporting_torch.py"
    wrapper.write_text(TORCH_REPORT.format(train=str(ROOT / "train.py"), root=str(ROOT)))
    proc = run_script(str(wrapper), ["-m", *TINY, "seed=1", "agent.clip_coef=0.1", "agent.num_envs=1,2",
                                     "hydra/launcher=population", "hydra.launcher.n_jobs=2",
                                     f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Population 1: jobs #1" in proc.stdout + proc.stderr
    # The launcher process trains nothing: it composes the jobs while the workers import torch.
    assert "launcher imported torch: False" in proc.stdout, proc.stdout[-2000:]
    one, two = job_dirs(sweep_dir)
    assert json.loads((one / "summary.json").read_text())["global_step"] == 512
    assert_same_weights(two, population_sweep / "0")  # seed=1 clip 0.1 num_envs=2, in a population of 4 there


def test_each_member_has_its_own_wandb_run_in_the_sweeps_group(tmp_path):
    from wandb_offline import offline_run

    sweep_dir = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith("logger=")]
    proc = run_script("train.py", ["-m", *args, "logger=wandb", "seed=1,2,3", "hydra/launcher=population",
                                   f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [offline_run(job) for job in job_dirs(sweep_dir)]
    assert [r["config"]["seed"] for r in runs] == [1, 2, 3]
    assert len({r["id"] for r in runs}) == 3 and len({r["group"] for r in runs}) == 1
    for run in runs:
        assert run["exit_code"] == 0 and run["summary"]["global_step"] == 512
        assert "train/approx_kl" in run["history_keys"]


def test_a_recurrent_population_says_it_cannot_batch_and_trains_each_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(sweep_dir, "network=lstm", "seed=1,2", "hydra/launcher=population")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Population 0: jobs #0, #1" in out
    assert "cannot be batched (recurrent cores (network.core) are not stacked)" in out
    for job in job_dirs(sweep_dir):
        assert json.loads((job / "summary.json").read_text())["global_step"] == 512


def test_a_failing_member_fails_only_its_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(sweep_dir, "agent.clip_coef=-1,0.2", "hydra/launcher=population")
    assert proc.returncode != 0
    assert "error: agent.clip_coef=-1.0 is not allowed" in proc.stderr, proc.stderr[-3000:]
    named = [line for line in proc.stderr.splitlines() if "Error executing job with overrides" in line]
    assert named and "agent.clip_coef=-1'" in named[0]
    bad, good = job_dirs(sweep_dir)
    assert (bad / ".hydra" / "overrides.yaml").is_file() and not (bad / "summary.json").exists()
    assert (good / "summary.json").is_file() and (good / "checkpoints" / "final.pt").is_file()


def test_optuna_trains_each_batch_of_trials_as_a_population(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(sweep_dir, "hparams_search=cartpole_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                 "hydra/launcher=population")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    assert "Population 0: jobs #0, #1" in proc.stdout + proc.stderr, "the two trials of a batch train together"
    returns = [json.loads((j / "summary.json").read_text())["eval/episodic_return"] for j in jobs]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(returns))


def test_optuna_batches_reuse_the_launchers_worker_processes(tmp_path):
    """Two batches of trials (two launches) on one pool of n_jobs=2 workers, started once."""
    sweep_dir = tmp_path / "sweep"
    proc = sweep(sweep_dir, "hparams_search=cartpole_optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                 "hydra/launcher=population", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("Setting up 2 jobs as populations") == 2
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    returns = [json.loads((j / "summary.json").read_text())["eval/episodic_return"] for j in jobs]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(returns))


def test_sigterm_stops_the_population_sweep_and_the_sweep_resumes_as_a_population(tmp_path):
    sweep_dir = tmp_path / "sweep"
    returncode, err = sigterm_once_training(
        ["-m", "seed=1,2", "logger=none", "progress=false", "total_timesteps=2000000", "agent.num_envs=2",
         "agent.num_steps=64", "eval_episodes=1", "hydra/launcher=population", f"hydra.sweep.dir={sweep_dir}"],
        tmp_path, sweep_dir / "0" / "metrics.jsonl")
    assert returncode != 0
    assert "SIGTERM received" in err, err[-3000:]
    assert f"resume={sweep_dir / '0'}" in err and f"resume={sweep_dir / '1'}" in err, err[-3000:]
    (ckpt,) = (sweep_dir / "0" / "checkpoints").glob("update_*.pt")
    (other,) = (sweep_dir / "1" / "checkpoints").glob("update_*.pt")  # both members train together
    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert torch.load(other, weights_only=False)["global_step"] == step
    assert f"hydra.sweep.dir={sweep_dir}" in err
    # The same sweep again, into its dir (shortened to 2 more rollouts): both jobs resume, as one population.
    again = sweep(sweep_dir, "seed=1,2", "hydra/launcher=population", f"total_timesteps={step + 256}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Population 0: jobs #0, #1" in again.stdout + again.stderr
    for job in job_dirs(sweep_dir):
        assert torch.load(job / "checkpoints" / "final.pt", weights_only=False)["global_step"] == step + 256
        assert json.loads((job / "summary.json").read_text())["global_step"] == step + 256
    # Once more: both are finished, nothing trains, the objectives are returned.
    third = sweep(sweep_dir, "seed=1,2", "hydra/launcher=population", f"total_timesteps={step + 256}")
    assert third.returncode == 0 and (third.stdout + third.stderr).count("finished before") == 2, third.stderr[-3000:]
    done = run_script("train.py", [f"resume={sweep_dir / '0'}", f"total_timesteps={step + 512}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(sweep_dir / "0" / "checkpoints" / "final.pt", weights_only=False)["global_step"] == step + 512


def test_sigterm_reaches_the_worker_processes_of_n_jobs_2(tmp_path):
    sweep_dir = tmp_path / "sweep"
    returncode, err = sigterm_once_training(
        ["-m", "seed=1", "agent.num_envs=1,2", "logger=none", "progress=false", "total_timesteps=2000000",
         "agent.num_steps=64", "eval_episodes=1", "hydra/launcher=population", "hydra.launcher.n_jobs=2",
         f"hydra.sweep.dir={sweep_dir}"], tmp_path, sweep_dir / "1" / "metrics.jsonl")
    assert returncode != 0
    assert "SIGTERM received" in err and f"resume={sweep_dir / '1'}" in err, err[-3000:]
    assert list((sweep_dir / "1" / "checkpoints").glob("update_*.pt"))
    assert not (sweep_dir / "1" / "checkpoints" / "final.pt").exists()


def test_the_launcher_takes_the_configs_the_sweeper_composed_to_validate_the_batch():
    """Each job is composed once: the launcher reuses the config the sweeper's validation made."""
    from hydra_plugins.ppo_lab_population_launcher.population_launcher import _ComposedSweepConfigs

    class Loader:
        def __init__(self):
            self.calls = []

        def load_sweep_config(self, master_config, sweep_overrides):
            self.calls.append(list(sweep_overrides))
            return {"overrides": list(sweep_overrides), "n": len(self.calls)}

    loader, master = Loader(), object()
    composed = _ComposedSweepConfigs.install(loader)
    assert _ComposedSweepConfigs.install(loader) is composed  # installed once per loader
    validated = [loader.load_sweep_config(master_config=master, sweep_overrides=[f"seed={s}"]) for s in (1, 2)]
    assert composed.take(master, ["seed=2"]) is validated[1] and composed.take(master, ["seed=1"]) is validated[0]
    assert len(loader.calls) == 2
    assert composed.take(master, ["seed=1"]) == {"overrides": ["seed=1"], "n": 3}  # taken once: composed again
    loader.load_sweep_config(master_config=master, sweep_overrides=["seed=3"])
    assert composed.take(object(), ["seed=3"])["n"] == 5  # another master config's job: composed for it
    loader.load_sweep_config(master_config=master, sweep_overrides=["seed=9"])
    composed.clear()
    assert composed.take(master, ["seed=9"])["n"] == 7


def test_workers_exit_when_the_launcher_process_is_killed(tmp_path):
    """SIGKILL of the sweep's process (no clean-up runs): its n_jobs=2 workers exit on their own."""
    import os
    import signal
    import time

    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", "seed=1,2", "logger=none", "progress=false",
         "total_timesteps=2000000", "agent.num_envs=2", "agent.num_steps=64", "hydra/launcher=population",
         "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = sweep_dir / "0" / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert metrics.exists() and len(children) >= 2, children  # the workers (and W&B-free: no service)

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:
            return False

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(alive(c) for c in children):
        time.sleep(0.2)
    leftover = [c for c in children if alive(c)]
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, "workers outlived the killed launcher"
