"""Training throughput of ppo_lab next to Stable-Baselines3's PPO, same hyperparameters.

    python benchmarks/bench.py                      # CartPole-v1 100k + HalfCheetah-v5 50k steps
    python benchmarks/bench.py --repeats 2 --default-runs
    python benchmarks/bench.py --quick --skip-sb3   # smoke test (seconds)
    python benchmarks/bench.py --recurrent-only     # ppo_lab's LSTM vs sb3-contrib RecurrentPPO

Each training run is its own subprocess (``sys.executable``), so its process wall includes
imports, env construction and the final evaluation (10 deterministic episodes) in both programs.
Programs alternate (ppo_lab, SB3, ppo_lab, SB3, ...) for ``--repeats`` rounds; the table shows
medians. Both children get ``OMP_NUM_THREADS=1`` and 1 torch thread. Peak RSS per child comes from
``os.wait4`` (the child's own ``ru_maxrss``, KiB on Linux).

Reported per program:

* ``process_sps``: env steps / process wall (the headline; the ratio ppo_lab/SB3 uses it);
* ``loop_sps``: env steps / in-loop seconds. ppo_lab: ``time/wall_s`` from its summary.json,
  which *includes* its final evaluation and final checkpoint; SB3: the ``learn()`` call alone
  (its evaluation is timed separately and not counted);
* ``phases_sps`` (ppo_lab only): env steps / the sum of its loop phases (env, inference, update,
  log), i.e. the loop without evaluation and checkpoint writes: the number to set beside SB3's
  ``learn()`` SPS.

Both programs train for the same number of env steps: the budget is rounded down to whole
rollouts (ppo_lab runs ``total_timesteps // batch_size`` updates, SB3 would run one more).

The recurrent pairing (``--recurrent``, or ``--recurrent-only``) trains ppo_lab's LSTM
(``env=popgym_cartpole``, its own preset) and sb3-contrib's ``RecurrentPPO`` with rl-zoo3's
``CartPoleNoVel-v1`` settings (:data:`RECURRENT_SB3`) on the same POPGym env and budget, and
compares process-wall steps per second and the final eval return (10 deterministic episodes,
the state carried through each episode by both).

Stable-Baselines3 is optional (``pip install -e ".[bench]"``); without it ppo_lab runs alone.
Top-level imports are stdlib only: the SB3 child is this file, and its import time is SB3's.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results.json"

#: Matched settings per benchmark env. ``ppo_lab`` are train.py overrides; ``sb3`` PPO kwargs
#: (the lr schedule and policy_kwargs are built in the child).
SETTINGS: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "num_envs": 4, "num_steps": 128, "num_minibatches": 4, "update_epochs": 4,
        "learning_rate": 2.5e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_coef": 0.2,
        "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "normalize": False,
        "ppo_lab": ["env=cartpole", "network=mlp_separate"],
    },
    "HalfCheetah-v5": {
        "num_envs": 1, "num_steps": 2048, "num_minibatches": 32, "update_epochs": 10,
        "learning_rate": 3e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_coef": 0.2,
        "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5, "normalize": True,
        "ppo_lab": ["env=halfcheetah", "network=mlp_separate"],
    },
    "ALE/Breakout-v5": {
        "num_envs": 8, "num_steps": 128, "num_minibatches": 4, "update_epochs": 4,
        "learning_rate": 2.5e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_coef": 0.1,
        "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "normalize": False,
        "ppo_lab": ["env=breakout", "network=cnn_shared"],
    },
}

#: The recurrent pairing's env (POPGym, registered by ``import popgym``) and the rl-zoo3 settings
#: of sb3-contrib's RecurrentPPO for it (hyperparams/ppo_lstm.yml, CartPoleNoVel-v1).
RECURRENT_ENV = "popgym-PositionOnlyCartPoleEasy-v0"
RECURRENT_SB3: dict[str, Any] = {
    "n_envs": 8, "n_steps": 32, "batch_size": 256, "n_epochs": 20, "learning_rate": 1e-3, "clip_range": 0.2,
    "gamma": 0.98, "gae_lambda": 0.8, "ent_coef": 0.0, "norm_obs": True, "lstm_hidden_size": 64,
    "enable_critic_lstm": True, "net_arch": {"pi": [64], "vf": [64]}, "activation_fn": "ReLU", "ortho_init": False,
}
#: ppo_lab's side: its env config (LSTM preset) at the same budget.
RECURRENT_PPO_LAB = ["env=popgym_cartpole"]
#: ppo_lab's rollout (num_envs x num_steps of conf/agent/popgym_lstm.yaml): budgets are whole rollouts of it.
RECURRENT_BATCH = 64 * 32
#: The issue's recurrent target: steps/s ratio and at least RecurrentPPO's return.
RECURRENT_TARGET = 10.0

#: The issue's targets (CPU).
TARGETS = {"CartPole-v1": 2.5, "HalfCheetah-v5": 1.5}
#: Training-return thresholds for "time to target": the first time the mean of the last
#: :data:`RETURN_WINDOW` finished training episodes (raw returns, stochastic policy) reaches the
#: threshold, checked after each update in both programs. Chosen once, before measuring, as a
#: level both should pass within the default budgets (CartPole-v0's old "solved" bar; HalfCheetah
#: moving forward at all).
RETURN_TARGETS = {"CartPole-v1": 195.0, "HalfCheetah-v5": 0.0, "ALE/Breakout-v5": 10.0}
RETURN_WINDOW = 20
DEFAULT_RUN_TARGET = {"eval_return": 475.0, "process_wall_s": 20.0}
EVAL_EPISODES = 10
EVAL_SEED = 10_000


# ---------------------------------------------------------------------------- children
def child_env() -> dict[str, str]:
    """Environment of every child: one OpenMP/MKL thread, W&B offline and quiet.

    Returns:
        A copy of ``os.environ`` with the thread and W&B variables set.
    """
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
                "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"})
    return env


def run_child(args: list[str], log_path: Path, cwd: Path = ROOT) -> dict[str, Any]:
    """Run ``sys.executable *args`` to completion; measure its wall and peak RSS.

    Args:
        args: arguments after the interpreter.
        log_path: file that receives the child's stdout and stderr.
        cwd: working directory of the child.

    Returns:
        ``{"returncode", "process_wall_s" (seconds, Popen to reap), "peak_rss_kib" (the child's
        own ru_maxrss, KiB)}``.
    """
    with open(log_path, "w") as log:
        tic = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=child_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - tic
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "process_wall_s": wall, "peak_rss_kib": int(rusage.ru_maxrss)}


def rounded_steps(env_id: str, steps: int) -> int:
    """Round ``steps`` down to whole rollouts of ``env_id``'s batch (at least one rollout).

    Args:
        env_id: a key of :data:`SETTINGS`.
        steps: requested budget in env steps.

    Returns:
        The budget both programs actually train for, in env steps.
    """
    s = SETTINGS[env_id]
    batch = s["num_envs"] * s["num_steps"]
    return max(batch, steps // batch * batch)


def ppo_lab_overrides(env_id: str, steps: int, seed: int) -> list[str]:
    """train.py overrides that match :data:`SETTINGS` (value clipping off, lr annealed, clip not).

    Args:
        env_id: a key of :data:`SETTINGS`.
        steps: budget in env steps (already rounded to whole rollouts).
        seed: run seed.

    Returns:
        The override list, without ``hydra.run.dir``.
    """
    s = SETTINGS[env_id]
    return [*s["ppo_lab"], "logger=none", "progress=false",
            f"agent.num_envs={s['num_envs']}", f"agent.num_steps={s['num_steps']}",
            f"agent.num_minibatches={s['num_minibatches']}", f"agent.update_epochs={s['update_epochs']}",
            f"agent.learning_rate={s['learning_rate']}", "agent.anneal_lr=true",
            f"agent.gamma={s['gamma']}", f"agent.gae_lambda={s['gae_lambda']}",
            f"agent.clip_coef={s['clip_coef']}", "agent.anneal_clip=false",
            f"agent.ent_coef={s['ent_coef']}", f"agent.vf_coef={s['vf_coef']}",
            f"agent.max_grad_norm={s['max_grad_norm']}", "agent.norm_adv=true",
            "agent.clip_vloss=false", "agent.target_kl=null", "torch_threads=1",
            "device=auto" if env_id.startswith("ALE/") else "device=cpu",
            f"total_timesteps={steps}", f"seed={seed}", f"eval_episodes={EVAL_EPISODES}"]


def run_ppo_lab(env_id: str, steps: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One ppo_lab training run as ``python train.py ...`` in a subprocess.

    Args:
        env_id: a key of :data:`SETTINGS`.
        steps: budget in env steps (whole rollouts).
        seed: run seed.
        workdir: scratch dir; the run dir and log go below it.

    Returns:
        A result row: process wall (seconds), peak RSS (KiB), SPS figures (env steps per
        second), eval return and ppo_lab's time breakdown (seconds).
    """
    run_dir = Path(tempfile.mkdtemp(prefix="ppo_lab_", dir=workdir))
    overrides = [*ppo_lab_overrides(env_id, steps, seed), f"hydra.run.dir={run_dir}"]
    res = run_child([str(ROOT / "train.py"), *overrides], run_dir / "stdout.log")
    row = {"program": "ppo_lab", "env": env_id, "steps": steps, "seed": seed, **res}
    summary_path = run_dir / "summary.json"
    if res["returncode"] != 0 or not summary_path.exists():
        row["error"] = _tail(run_dir / "stdout.log")
        return row
    summary = json.loads(summary_path.read_text())
    phases = {k: float(summary.get(f"time/{k}_s", 0.0)) for k in ("env", "inference", "update", "log")}
    loop_s = float(summary["time/wall_s"])
    phases_s = sum(phases.values())
    row.update(time_to_target_ppo_lab(run_dir / "metrics.jsonl", RETURN_TARGETS[env_id]))
    row.update({
        "steps": int(summary.get("global_step", steps)),
        "loop_s": loop_s,
        "phases_s": phases_s,
        "eval_return": float(summary["eval/episodic_return"]),
        "breakdown_s": {**phases, "loop_other": loop_s - phases_s,
                        "startup_and_exit": res["process_wall_s"] - loop_s},
    })
    return _add_sps(row)


def time_to_target_ppo_lab(metrics_path: Path, target: float) -> dict[str, Any]:
    """When a ppo_lab run's training return first reached ``target``.

    Reads ``charts/episodic_return_last20`` (mean of the last 20 finished episodes) and
    ``time/elapsed_s`` (seconds since the training loop started), logged after every update.

    Args:
        metrics_path: the run's metrics.jsonl.
        target: the return threshold.

    Returns:
        ``{"target_return", "time_to_target_s" (seconds, or None if never reached),
        "steps_to_target" (env steps, or None)}``.
    """
    out: dict[str, Any] = {"target_return": target, "time_to_target_s": None, "steps_to_target": None}
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if row.get("charts/episodic_return_last20", -math.inf) >= target and "time/elapsed_s" in row:
            out.update(time_to_target_s=float(row["time/elapsed_s"]), steps_to_target=int(row["global_step"]))
            break
    return out


def run_sb3(env_id: str, steps: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One SB3 PPO training run: this script re-entered as a child (``--sb3-child``).

    Args:
        env_id: a key of :data:`SETTINGS`.
        steps: budget in env steps (whole rollouts).
        seed: run seed.
        workdir: scratch dir for the child's log and result file.

    Returns:
        A result row like :func:`run_ppo_lab`'s (no breakdown; ``loop_s`` is ``learn()``).
    """
    out = Path(tempfile.mkdtemp(prefix="sb3_", dir=workdir))
    res = run_child([str(Path(__file__).resolve()), "--sb3-child", env_id, "--steps", str(steps),
                     "--seed", str(seed), "--json", str(out / "child.json")], out / "stdout.log")
    row = {"program": "sb3", "env": env_id, "steps": steps, "seed": seed, **res}
    if res["returncode"] != 0 or not (out / "child.json").exists():
        row["error"] = _tail(out / "stdout.log")
        return row
    row.update(json.loads((out / "child.json").read_text()))
    return _add_sps(row)


def _add_sps(row: dict[str, Any]) -> dict[str, Any]:
    row["process_sps"] = row["steps"] / row["process_wall_s"]
    row["loop_sps"] = row["steps"] / row["loop_s"]
    if "phases_s" in row:
        row["phases_sps"] = row["steps"] / row["phases_s"]
    return row


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def sb3_child(env_id: str, steps: int, seed: int, out: Path) -> None:
    """Train SB3 PPO with :data:`SETTINGS` and write timings and eval return to ``out`` (JSON).

    Runs inside the child process. ``learn_s`` (seconds) times ``model.learn`` alone;
    ``eval_s`` times ``evaluate_policy`` (10 deterministic episodes, frozen normalization).

    Args:
        env_id: a key of :data:`SETTINGS`.
        steps: budget in env steps (whole rollouts).
        seed: run seed.
        out: result file.
    """
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize

    torch.set_num_threads(1)
    s = SETTINGS[env_id]
    atari = env_id.startswith("ALE/")
    if atari:
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)

    def make(n_envs: int, env_seed: int) -> Any:
        if atari:
            return VecFrameStack(make_atari_env(env_id, n_envs=n_envs, seed=env_seed,
                                                env_kwargs={"frameskip": 1}), n_stack=4)
        return make_vec_env(env_id, n_envs=n_envs, seed=env_seed)

    venv = make(s["num_envs"], seed)
    if s["normalize"]:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0,
                            gamma=s["gamma"])
    lr0 = s["learning_rate"]
    policy_kwargs: dict[str, Any] = {}
    if not atari:
        policy_kwargs = {"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh}
    model = PPO(
        "CnnPolicy" if atari else "MlpPolicy", venv,
        learning_rate=lambda f: lr0 * f, n_steps=s["num_steps"],
        batch_size=s["num_envs"] * s["num_steps"] // s["num_minibatches"], n_epochs=s["update_epochs"],
        gamma=s["gamma"], gae_lambda=s["gae_lambda"], clip_range=s["clip_coef"], clip_range_vf=None,
        normalize_advantage=True, ent_coef=s["ent_coef"], vf_coef=s["vf_coef"],
        max_grad_norm=s["max_grad_norm"], policy_kwargs=policy_kwargs, seed=seed,
        device="auto" if atari else "cpu", verbose=0,
    )
    class TimeToTarget(BaseCallback):
        """Same rule as ppo_lab's: after each update (at the next rollout's start, or at the end),
        the mean of the last RETURN_WINDOW finished episodes (Monitor's raw returns)."""

        def __init__(self, target: float) -> None:
            super().__init__()
            self.target, self.result = target, {"target_return": target, "time_to_target_s": None,
                                                "steps_to_target": None}

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _check(self) -> None:
            episodes = list(self.model.ep_info_buffer)[-RETURN_WINDOW:]
            if (self.result["time_to_target_s"] is None and episodes
                    and sum(e["r"] for e in episodes) / len(episodes) >= self.target):
                self.result.update(time_to_target_s=time.perf_counter() - self.start,
                                   steps_to_target=int(self.num_timesteps))

        def _on_rollout_start(self) -> None:
            self._check()

        def _on_training_end(self) -> None:
            self._check()

        def _on_step(self) -> bool:
            return True

    callback = TimeToTarget(RETURN_TARGETS[env_id])
    tic = time.perf_counter()
    model.learn(total_timesteps=steps, callback=callback)
    learn_s = time.perf_counter() - tic

    tic = time.perf_counter()
    eval_env = make(1, EVAL_SEED)
    if s["normalize"]:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, clip_obs=10.0)
        eval_env.obs_rms = venv.obs_rms
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    eval_s = time.perf_counter() - tic
    out.write_text(json.dumps({"steps": int(model.num_timesteps), "loop_s": learn_s, "eval_s": eval_s,
                               "eval_return": float(mean), "eval_return_std": float(std),
                               **callback.result}))


def recurrent_sb3_child(steps: int, seed: int, out: Path) -> None:
    """Train sb3-contrib's RecurrentPPO with :data:`RECURRENT_SB3` on :data:`RECURRENT_ENV` and write
    ``learn_s``, ``eval_s`` (seconds) and the eval return (10 deterministic episodes, the LSTM
    state carried by SB3's ``evaluate_policy``) to ``out`` (JSON). Runs inside the child process."""
    import gymnasium
    import popgym  # noqa: F401  (registers the popgym-* ids)
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    s = RECURRENT_SB3
    assert gymnasium.spec(RECURRENT_ENV) is not None
    venv = VecNormalize(make_vec_env(RECURRENT_ENV, n_envs=s["n_envs"], seed=seed), norm_obs=s["norm_obs"],
                        norm_reward=False, clip_obs=10.0, gamma=s["gamma"])
    lr0, clip0 = s["learning_rate"], s["clip_range"]
    model = RecurrentPPO(
        "MlpLstmPolicy", venv, learning_rate=lambda f: lr0 * f, clip_range=lambda f: clip0 * f,
        n_steps=s["n_steps"], batch_size=s["batch_size"], n_epochs=s["n_epochs"], gamma=s["gamma"],
        gae_lambda=s["gae_lambda"], ent_coef=s["ent_coef"], seed=seed, device="cpu", verbose=0,
        policy_kwargs={"lstm_hidden_size": s["lstm_hidden_size"], "enable_critic_lstm": s["enable_critic_lstm"],
                       "net_arch": s["net_arch"], "activation_fn": getattr(torch.nn, s["activation_fn"]),
                       "ortho_init": s["ortho_init"]},
    )
    tic = time.perf_counter()
    model.learn(total_timesteps=steps)
    learn_s = time.perf_counter() - tic
    tic = time.perf_counter()
    eval_env = VecNormalize(make_vec_env(RECURRENT_ENV, n_envs=1, seed=EVAL_SEED), training=False,
                            norm_obs=s["norm_obs"], norm_reward=False, clip_obs=10.0)
    eval_env.obs_rms = venv.obs_rms
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    out.write_text(json.dumps({"steps": int(model.num_timesteps), "loop_s": learn_s,
                               "eval_s": time.perf_counter() - tic, "eval_return": float(mean),
                               "eval_return_std": float(std)}))


def _row_note(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"error:\n{row['error']}"
    return f"wall {row['process_wall_s']:.1f} s, {row['process_sps']:,.0f} SPS, eval {row['eval_return']:.3f}"


def recurrent_pairing(steps: int, seed: int, workdir: Path, with_sb3: bool) -> dict[str, Any]:
    """ppo_lab's LSTM and (if installed) sb3-contrib's RecurrentPPO, one after the other.

    Args:
        steps: budget in env steps (rounded down to whole ppo_lab rollouts, which RecurrentPPO's
            8 x 32 rollouts also divide).
        seed: run seed.
        workdir: scratch dir.
        with_sb3: run the RecurrentPPO child too.

    Returns:
        ``{"steps", "ppo_lab": row, "recurrent_ppo": row or None, "ratio_process_sps", "ratio_loop_sps"}``;
        each row has ``process_wall_s``, ``process_sps``, ``loop_s`` (ppo_lab ``time/wall_s``,
        RecurrentPPO ``learn()``), ``loop_sps`` and ``eval_return``.
    """
    steps = max(RECURRENT_BATCH, steps // RECURRENT_BATCH * RECURRENT_BATCH)
    run_dir = Path(tempfile.mkdtemp(prefix="ppo_lab_lstm_", dir=workdir))
    res = run_child([str(ROOT / "train.py"), *RECURRENT_PPO_LAB, "logger=none", "progress=false", "torch_threads=1",
                     "device=cpu", f"total_timesteps={steps}", f"seed={seed}", f"eval_episodes={EVAL_EPISODES}",
                     f"hydra.run.dir={run_dir}"], run_dir / "stdout.log")
    ours: dict[str, Any] = {"program": "ppo_lab", "steps": steps, **res}
    if res["returncode"] == 0 and (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
        ours.update(loop_s=float(summary["time/wall_s"]), eval_return=float(summary["eval/episodic_return"]))
        ours = _add_sps(ours)
    else:
        ours["error"] = _tail(run_dir / "stdout.log")
    print(f"  recurrent ppo_lab: {_row_note(ours)}", flush=True)
    theirs: Optional[dict[str, Any]] = None
    if with_sb3:
        out = Path(tempfile.mkdtemp(prefix="recurrent_ppo_", dir=workdir))
        res = run_child([str(Path(__file__).resolve()), "--recurrent-sb3-child", "--steps", str(steps),
                         "--seed", str(seed), "--json", str(out / "child.json")], out / "stdout.log")
        theirs = {"program": "sb3_contrib.RecurrentPPO", "steps": steps, **res}
        if res["returncode"] == 0 and (out / "child.json").exists():
            theirs = _add_sps({**theirs, **json.loads((out / "child.json").read_text())})
        else:
            theirs["error"] = _tail(out / "stdout.log")
        print(f"  recurrent RecurrentPPO: {_row_note(theirs)}", flush=True)

    def ratio(key: str) -> Optional[float]:
        a, b = ours.get(key), (theirs or {}).get(key)
        return a / b if a and b else None

    return {"env": RECURRENT_ENV, "steps": steps, "ppo_lab": ours, "recurrent_ppo": theirs,
            "ratio_process_sps": ratio("process_sps"), "ratio_loop_sps": ratio("loop_sps")}


#: Population sweeps: the issue's two cases (8 seeds each) and the launchers compared on them.
POPULATION_CASES = {
    "cartpole_cleanrl_100k": ["experiment=cartpole_cleanrl", "total_timesteps=100000"],
    "halfcheetah_50k": ["env=halfcheetah", "total_timesteps=50000"],
}
POPULATION_TARGETS = {"cartpole_cleanrl_100k": {"basic": 3.0, "joblib": 1.5}, "halfcheetah_50k": {"joblib": 1.5}}
POPULATION_LAUNCHERS = {
    "basic": [],
    "joblib_n_jobs_2": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "population": ["hydra/launcher=population"],
    "population_n_jobs_2": ["hydra/launcher=population", "hydra.launcher.n_jobs=2"],
}


def population_sweeps(cases: list[str], seeds: int, workdir: Path, repeats: int = 1) -> dict[str, Any]:
    """The same sweep of ``seeds`` seeds (``python train.py -m <case> seed=1,...,N``, the default
    W&B-offline logger) under each launcher of :data:`POPULATION_LAUNCHERS`, side by side
    (launchers alternate within a round).

    Returns:
        ``{case: {"launchers": {name: {"sweep_wall_s" (median), "walls", "eval_returns" (per
        seed, last round)}}, "speedup_vs_basic", "speedup_vs_joblib"}}``: sweep wall clock
        (process start to exit) and its ratios against each population launcher.
    """
    out: dict[str, Any] = {}
    seed_list = ",".join(str(s) for s in range(1, seeds + 1))
    for case in cases:
        rows: dict[str, dict[str, Any]] = {name: {"walls": []} for name in POPULATION_LAUNCHERS}
        for rnd in range(repeats):
            for name, launcher in POPULATION_LAUNCHERS.items():
                sweep_dir = Path(tempfile.mkdtemp(prefix=f"sweep_{case}_{name}_", dir=workdir))
                res = run_child([str(ROOT / "train.py"), "-m", *POPULATION_CASES[case], f"seed={seed_list}",
                                 "progress=false", "torch_threads=1", f"hydra.sweep.dir={sweep_dir}", *launcher],
                                sweep_dir.parent / f"{sweep_dir.name}.log")
                row = rows[name]
                jobs = sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
                returns = [json.loads((d / "summary.json").read_text())["eval/episodic_return"]
                           for d in jobs if (d / "summary.json").is_file()]
                if res["returncode"] != 0 or len(returns) != seeds:
                    row["error"] = _tail(sweep_dir.parent / f"{sweep_dir.name}.log")
                row["walls"].append(res["process_wall_s"])
                row["eval_returns"] = returns
                print(f"  {case} round {rnd + 1} {name}: sweep wall {res['process_wall_s']:.1f} s, "
                      f"eval {', '.join(f'{r:.0f}' for r in returns)}", flush=True)
        for row in rows.values():
            row["sweep_wall_s"] = statistics.median(row["walls"])
        base, joblib = rows["basic"]["sweep_wall_s"], rows["joblib_n_jobs_2"]["sweep_wall_s"]
        out[case] = {"command": ["python train.py -m", *POPULATION_CASES[case], f"seed={seed_list}"],
                     "launchers": rows,
                     "speedup_vs_basic": {n: base / rows[n]["sweep_wall_s"] for n in rows if n.startswith("population")},
                     "speedup_vs_joblib": {n: joblib / rows[n]["sweep_wall_s"] for n in rows if n.startswith("population")}}
    return out


def sb3_version() -> Optional[str]:
    """Installed Stable-Baselines3 version, or None, without importing it (fast).

    Returns:
        The version string or None.
    """
    from importlib import metadata

    try:
        return metadata.version("stable-baselines3")
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- env-only ceilings
def _time_vector(make: Callable[[], Any], steps: int, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    envs = make()
    n = envs.num_envs
    iters = max(1, steps // n)
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, envs.single_action_space.n, size=(iters, n))
    envs.reset(seed=seed)
    tic = time.perf_counter()
    for a in actions:
        envs.step(a)
    sec = time.perf_counter() - tic
    envs.close()
    return {"num_envs": n, "steps": iters * n, "seconds": sec, "sps": iters * n / sec}


def _time_single(env_id: str, steps: int, seed: int = 0) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np

    env = gym.make(env_id)
    space = env.action_space
    rng = np.random.default_rng(seed)
    actions = rng.uniform(space.low, space.high, size=(steps, *space.shape)).astype(space.dtype)
    env.reset(seed=seed)
    tic = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    sec = time.perf_counter() - tic
    env.close()
    return {"num_envs": 1, "steps": steps, "seconds": sec, "sps": steps / sec}


def env_ceilings(cartpole_steps: int, cheetah_steps: int) -> list[dict[str, Any]]:
    """Raw env stepping speed with uniformly random actions (precomputed), measured in-process.

    Args:
        cartpole_steps: env steps (over all envs) per CartPole measurement.
        cheetah_steps: env steps for HalfCheetah-v5.

    Returns:
        One row per measurement: ``name``, ``env``, ``num_envs``, ``steps``, ``seconds``, ``sps``.
    """
    import gymnasium as gym

    rows = [
        {"name": "make_vec vector_entry_point (ppo_lab's)", "env": "CartPole-v1",
         **_time_vector(lambda: gym.make_vec("CartPole-v1", 4, vectorization_mode="vector_entry_point"),
                        cartpole_steps)},
        {"name": "SyncVectorEnv", "env": "CartPole-v1",
         **_time_vector(lambda: gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4),
                        cartpole_steps)},
    ]
    try:
        rows.append({"name": "gym.make, 1 env", "env": "HalfCheetah-v5",
                     **_time_single("HalfCheetah-v5", cheetah_steps)})
    except Exception as exc:  # MuJoCo missing: report, keep going
        print(f"note: HalfCheetah-v5 ceiling skipped ({type(exc).__name__}: {exc})")
    return rows


# ---------------------------------------------------------------------------- memory, default runs
def atari_memory(workdir: Path) -> dict[str, Any]:
    """Peak RSS of a short ppo_lab Breakout run, and the theoretical uint8 rollout obs buffer.

    Runs ``train.py env=breakout total_timesteps=2048 logger=none progress=false
    agent.num_steps=128 eval_episodes=1`` (8 envs).

    Args:
        workdir: scratch dir.

    Returns:
        ``peak_rss_kib`` (KiB), ``process_wall_s`` (seconds), ``returncode``, and
        ``obs_buffer_bytes`` = 8 x 128 x 4 x 84 x 84 (uint8, as allocated in ppo_lab/training/rollout.py).
    """
    run_dir = Path(tempfile.mkdtemp(prefix="atari_", dir=workdir))
    overrides = ["env=breakout", "total_timesteps=2048", "logger=none", "progress=false",
                 "agent.num_steps=128", "eval_episodes=1", "device=cpu", f"hydra.run.dir={run_dir}"]
    res = run_child([str(ROOT / "train.py"), *overrides], run_dir / "stdout.log")
    out = {"command": "python train.py " + " ".join(overrides[:-1]), **res,
           "obs_buffer_bytes": 8 * 128 * 4 * 84 * 84}
    if res["returncode"] != 0:
        out["error"] = _tail(run_dir / "stdout.log")
    return out


def default_runs(seeds: list[int], workdir: Path) -> list[dict[str, Any]]:
    """``python train.py seed=S progress=false`` (default config, W&B offline) for each seed.

    Args:
        seeds: the seeds to run.
        workdir: scratch dir for the run dirs.

    Returns:
        One row per seed: process wall (seconds), peak RSS (KiB), eval return, and whether the
        issue's target (eval >= 475 within 20 s process wall) is met.
    """
    rows = []
    for seed in seeds:
        run_dir = Path(tempfile.mkdtemp(prefix=f"default_s{seed}_", dir=workdir))
        res = run_child([str(ROOT / "train.py"), f"seed={seed}", "progress=false",
                         f"hydra.run.dir={run_dir}"], run_dir / "stdout.log")
        row = {"seed": seed, **res}
        summary = run_dir / "summary.json"
        if summary.exists():
            data = json.loads(summary.read_text())
            row.update({"eval_return": float(data["eval/episodic_return"]),
                        "loop_s": float(data["time/wall_s"]), "steps": int(data["global_step"])})
            row["target_met"] = (row["eval_return"] >= DEFAULT_RUN_TARGET["eval_return"]
                                 and row["process_wall_s"] <= DEFAULT_RUN_TARGET["process_wall_s"])
        else:
            row["error"] = _tail(run_dir / "stdout.log")
        rows.append(row)
        print(f"  default run seed={seed}: wall {row['process_wall_s']:.1f} s, "
              f"eval {row.get('eval_return', float('nan')):.1f}", flush=True)
    return rows


# ---------------------------------------------------------------------------- aggregation, output
def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of one program on one env.

    Args:
        rows: result rows of :func:`run_ppo_lab` or :func:`run_sb3` (same program and env).

    Returns:
        Median of every numeric field present in all successful rows (``breakdown_s`` too),
        plus ``repeats`` and ``failed`` counts.
    """
    ok = [r for r in rows if "error" not in r and r["returncode"] == 0]
    med: dict[str, Any] = {"program": rows[0]["program"], "env": rows[0]["env"],
                           "repeats": len(rows), "failed": len(rows) - len(ok)}
    if not ok:
        return med
    for key in ("steps", "process_wall_s", "process_sps", "loop_s", "loop_sps", "phases_s",
                "phases_sps", "eval_s", "eval_return", "peak_rss_kib"):
        if all(key in r for r in ok):
            med[key] = statistics.median(r[key] for r in ok)
    if all("breakdown_s" in r for r in ok):
        med["breakdown_s"] = {k: statistics.median(r["breakdown_s"][k] for r in ok)
                              for k in ok[0]["breakdown_s"]}
    med["eval_returns"] = [r["eval_return"] for r in ok]
    # Time to target: median over all rounds only when every round reached the target.
    reached = [r for r in ok if r.get("time_to_target_s") is not None]
    med["target_return"] = ok[0].get("target_return")
    med["target_reached"] = f"{len(reached)}/{len(ok)}"
    for key in ("time_to_target_s", "steps_to_target"):
        med[key] = statistics.median(r[key] for r in reached) if len(reached) == len(ok) else None
    return med


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_tables(report: dict[str, Any]) -> None:
    """Print the comparison, the ceilings, the breakdown and memory as Markdown tables.

    Args:
        report: the dict written to JSON by :func:`main`.
    """
    print("\n## Training throughput (medians; SPS = env steps per second)\n")
    print("| env | program | steps | process wall s | SPS process | SPS in-loop | SPS loop excl. eval "
          "| eval return (10 ep) | peak RSS MiB | ratio ppo_lab/SB3 (process SPS) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for env_id, res in report["results"].items():
        for prog in ("ppo_lab", "sb3"):
            m = res.get(prog)
            if not m:
                continue
            ratio = _fmt(res.get("ratio_process_sps"), ".2f") if prog == "ppo_lab" else ""
            loop_excl = m.get("phases_sps") if prog == "ppo_lab" else m.get("loop_sps")
            rss = m.get("peak_rss_kib")
            print(f"| {env_id} | {prog} | {_fmt(m.get('steps'), ',.0f')} | {_fmt(m.get('process_wall_s'), '.1f')} "
                  f"| {_fmt(m.get('process_sps'), ',.0f')} | {_fmt(m.get('loop_sps'), ',.0f')} "
                  f"| {_fmt(loop_excl, ',.0f')} | {_fmt(m.get('eval_return'), '.1f')} "
                  f"| {_fmt(rss / 1024 if rss else None, '.0f')} | {ratio} |")
    print("\nSPS in-loop: ppo_lab `time/wall_s` (includes its final eval and checkpoint); SB3 `learn()` "
          "only. SPS loop excl. eval: ppo_lab's phases summed; SB3 `learn()`.")

    print(f"\n## Time to a target training return (mean of the last {RETURN_WINDOW} episodes, "
          "checked after each update; seconds from the start of training)\n")
    print("| env | target return | program | reached (rounds) | seconds to target | env steps to target "
          "| ratio SB3/ppo_lab (seconds) |\n|---|---:|---|---|---:|---:|---:|")
    for env_id, res in report["results"].items():
        for prog in ("ppo_lab", "sb3"):
            m = res.get(prog)
            if not m:
                continue
            ratio = _fmt(res.get("ratio_time_to_target"), ".2f") if prog == "ppo_lab" else ""
            print(f"| {env_id} | {_fmt(m.get('target_return'), '.0f')} | {prog} | {m.get('target_reached')} "
                  f"| {_fmt(m.get('time_to_target_s'), '.2f')} | {_fmt(m.get('steps_to_target'), ',.0f')} "
                  f"| {ratio} |")

    print("\n## Env-only ceiling (random actions, in-process)\n")
    print("| env | vectorization | envs | steps | seconds | SPS |\n|---|---|---:|---:|---:|---:|")
    for c in report["ceilings"]:
        print(f"| {c['env']} | {c['name']} | {c['num_envs']} | {c['steps']:,} | {c['seconds']:.2f} "
              f"| {c['sps']:,.0f} |")

    print("\n## ppo_lab time breakdown (median; % of process wall)\n")
    print("| env | env step | inference | update (GAE + epochs) | log | loop other (eval, ckpt) "
          "| imports/startup/exit | process wall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for env_id, res in report["results"].items():
        m = res.get("ppo_lab", {})
        b, wall = m.get("breakdown_s"), m.get("process_wall_s")
        if not b:
            continue
        cells = " | ".join(f"{b[k]:.2f} s ({100 * b[k] / wall:.0f}%)" for k in
                           ("env", "inference", "update", "log", "loop_other", "startup_and_exit"))
        print(f"| {env_id} | {cells} | {wall:.2f} s |")

    mem = report.get("memory", {})
    if mem:
        print("\n## Peak RSS\n")
        for env_id, res in report["results"].items():
            for prog in ("ppo_lab", "sb3"):
                rss = res.get(prog, {}).get("peak_rss_kib")
                if rss:
                    print(f"- {env_id} {prog}: {rss / 1024:.0f} MiB")
        atari = mem.get("atari")
        if atari:
            rss = atari["peak_rss_kib"] / 1024 if atari.get("returncode") == 0 else None
            print(f"- Breakout ppo_lab ({atari['command']}): {_fmt(rss, '.0f')} MiB; "
                  f"uint8 rollout obs buffer 8 x 128 x 4 x 84 x 84 = "
                  f"{atari['obs_buffer_bytes'] / 1e6:.1f} MB")

    if report.get("default_runs"):
        print("\n## `python train.py` defaults (target: eval >= 475 within 20 s process wall)\n")
        print("| seed | process wall s | eval return | target met |\n|---:|---:|---:|---|")
        for r in report["default_runs"]:
            print(f"| {r['seed']} | {r['process_wall_s']:.1f} | {_fmt(r.get('eval_return'), '.1f')} "
                  f"| {'yes' if r.get('target_met') else 'no'} |")

    rec = report.get("recurrent")
    if rec:
        print(f"\n## Recurrent: ppo_lab LSTM (env=popgym_cartpole) vs sb3-contrib RecurrentPPO (rl-zoo3 "
              f"CartPoleNoVel settings), {rec['env']}, {rec['steps']:,} env steps\n")
        print("| program | process wall s | SPS process | loop s | SPS loop | eval return (10 ep, max 1.0) |\n"
              "|---|---:|---:|---:|---:|---:|")
        for m in (rec["ppo_lab"], rec.get("recurrent_ppo")):
            if m:
                print(f"| {m['program']} | {_fmt(m.get('process_wall_s'), '.1f')} | {_fmt(m.get('process_sps'), ',.0f')} "
                      f"| {_fmt(m.get('loop_s'), '.1f')} | {_fmt(m.get('loop_sps'), ',.0f')} "
                      f"| {_fmt(m.get('eval_return'), '.3f')} |")
        print(f"\nratio ppo_lab/RecurrentPPO: process SPS {_fmt(rec.get('ratio_process_sps'), '.1f')}x, "
              f"loop SPS (ppo_lab time/wall_s vs learn()) {_fmt(rec.get('ratio_loop_sps'), '.1f')}x")

    for case, res in (report.get("population") or {}).items():
        print(f"\n## Population sweep: {' '.join(res['command'])} (sweep wall clock)\n")
        print("| launcher | sweep wall s | speed-up vs basic | speed-up vs joblib n_jobs=2 | eval returns |\n"
              "|---|---:|---:|---:|---|")
        for name, row in res["launchers"].items():
            print(f"| {name} | {row['sweep_wall_s']:.1f} | {_fmt(res['speedup_vs_basic'].get(name), '.2f')} "
                  f"| {_fmt(res['speedup_vs_joblib'].get(name), '.2f')} "
                  f"| {', '.join(f'{r:.0f}' for r in row.get('eval_returns', []))}{' (error)' if 'error' in row else ''} |")

    print("\n## Targets (CPU)" + (" -- quick budgets: startup dominates, not a measurement"
                                   if report.get("quick") else "") + "\n")
    for t in report["targets"]:
        verdict = "not measured" if t["met"] is None else ("MET" if t["met"] else "NOT met")
        print(f"- {t['target']}: measured {t['measured']} -> {verdict}")


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Set the issue's targets beside the measured numbers.

    Args:
        report: the report being built (results and default runs).

    Returns:
        One row per target with ``target``, ``measured`` (text) and ``met`` (bool or None).
    """
    rows = []
    for env_id, want in TARGETS.items():
        ratio = report["results"].get(env_id, {}).get("ratio_process_sps")
        rows.append({"target": f"ppo_lab >= {want}x SB3 process-wall SPS on {env_id}",
                     "measured": "n/a" if ratio is None else f"{ratio:.2f}x", "met": None if ratio is None else ratio >= want})
    rec = report.get("recurrent")
    if rec and rec.get("recurrent_ppo"):
        r, ours, theirs = rec.get("ratio_process_sps"), rec["ppo_lab"], rec["recurrent_ppo"]
        met = None if r is None else (r >= RECURRENT_TARGET and ours.get("eval_return", -1) >= theirs.get("eval_return", 0))
        rows.append({"target": f"ppo_lab LSTM >= {RECURRENT_TARGET:.0f}x RecurrentPPO process SPS and >= its eval return",
                     "measured": "n/a" if r is None else f"{r:.1f}x, eval {ours.get('eval_return', float('nan')):.3f} "
                                                         f"vs {theirs.get('eval_return', float('nan')):.3f}", "met": met})
    for case, res in (report.get("population") or {}).items():
        best = max(res["speedup_vs_basic"], key=res["speedup_vs_basic"].get)
        vs_basic, vs_joblib = res["speedup_vs_basic"][best], res["speedup_vs_joblib"][best]
        want = POPULATION_TARGETS.get(case, {})
        met = all(v >= want[k] for k, v in (("basic", vs_basic), ("joblib", vs_joblib)) if k in want)
        wanted = " and ".join(f">= {want[k]}x {'basic' if k == 'basic' else 'joblib n_jobs=2'}" for k in want)
        rows.append({"target": f"{case}: population launcher {wanted} (sweep wall clock)",
                     "measured": f"{best}: {vs_basic:.2f}x basic, {vs_joblib:.2f}x joblib", "met": met})
    if report.get("default_runs"):
        runs = report["default_runs"]
        measured = ", ".join(f"seed {r['seed']}: {_fmt(r.get('eval_return'), '.1f')} in "
                             f"{r['process_wall_s']:.1f} s" for r in runs)
        rows.append({"target": "python train.py: eval >= 475 in <= 20 s process wall, seeds 1-3",
                     "measured": measured, "met": all(r.get("target_met") for r in runs)})
    return rows


def machine_info() -> dict[str, Any]:
    """Versions and hardware of this machine.

    Returns:
        CPU count, python, platform, torch / gymnasium / SB3 versions, CUDA availability, date.
    """
    from importlib import metadata

    import torch

    def ver(name: str) -> Optional[str]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "gymnasium": ver("gymnasium"), "mujoco": ver("mujoco"),
            "stable_baselines3": ver("stable-baselines3"),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _cpu_model() -> Optional[str]:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()`` or None.
    Machines of one kind differ: a slower draw changes every absolute figure, not the ratios."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# ---------------------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line options (see the module docstring).

    Args:
        argv: arguments; None reads ``sys.argv``.

    Returns:
        The parsed namespace.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets for a smoke test (5k CartPole, 4096 HalfCheetah steps, 1 round, no Atari RSS run)")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds per env (median reported)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--skip-sb3", action="store_true", help="run ppo_lab alone")
    p.add_argument("--cartpole-steps", type=int, default=100_000, help="CartPole-v1 budget, env steps")
    p.add_argument("--cheetah-steps", type=int, default=50_000, help="HalfCheetah-v5 budget, env steps")
    p.add_argument("--breakout-steps", type=int, default=100_000,
                   help="Breakout budget, agent steps (only with CUDA)")
    p.add_argument("--force-breakout", action="store_true",
                   help="run the Breakout comparison without CUDA too (slow; checks the code path)")
    p.add_argument("--skip-atari-memory", action="store_true", help="skip the short Breakout RSS run")
    p.add_argument("--default-runs", action="store_true",
                   help="also time `python train.py seed=S progress=false` for S in 1, 2, 3")
    p.add_argument("--recurrent", action="store_true",
                   help="also pair ppo_lab's LSTM with sb3-contrib RecurrentPPO on POPGym position-only CartPole")
    p.add_argument("--recurrent-only", action="store_true", help="run the recurrent pairing alone")
    p.add_argument("--recurrent-steps", type=int, default=100_000, help="the recurrent pairing's budget, env steps")
    p.add_argument("--population", action="store_true",
                   help="also compare sweep launchers (basic, joblib, population) on 8-seed sweeps")
    p.add_argument("--population-only", action="store_true", help="run the population sweep comparison alone")
    p.add_argument("--population-seeds", type=int, default=8, help="seeds per population sweep")
    p.add_argument("--population-cases", default=",".join(POPULATION_CASES),
                   help=f"comma-separated cases of {', '.join(POPULATION_CASES)}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--recurrent-sb3-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sb3-child", metavar="ENV_ID", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.cartpole_steps, args.cheetah_steps, args.breakout_steps = 5_000, 4_096, 2_048
        args.repeats, args.skip_atari_memory = 1, True
        args.recurrent_steps = 2 * RECURRENT_BATCH
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the benchmark, print tables, write JSON.

    Args:
        argv: command-line arguments; None reads ``sys.argv``.

    Returns:
        The report written to ``--json``.
    """
    args = parse_args(argv)
    if args.sb3_child:
        sb3_child(args.sb3_child, args.steps, args.seed, args.json)
        return {}
    if args.recurrent_sb3_child:
        recurrent_sb3_child(args.steps, args.seed, args.json)
        return {}
    import torch

    with_sb3 = not args.skip_sb3 and sb3_version() is not None
    if not args.skip_sb3 and not with_sb3:
        print("note: stable-baselines3 is not installed (pip install -e \".[bench]\"); "
              "running ppo_lab alone, ratios n/a")
    report: dict[str, Any] = {"machine": machine_info(), "command": " ".join(["python", *sys.argv]),
                              "repeats": args.repeats, "quick": args.quick, "settings": SETTINGS,
                              "results": {}}
    print(f"machine: {report['machine']}", flush=True)

    report["ceilings"] = []
    budgets: dict[str, int] = {}
    # One comparison alone: skip the SB3 pairings, ceilings and memory runs.
    alone = args.recurrent_only or args.population_only
    if not alone:
        print("env-only ceilings ...", flush=True)
        report["ceilings"] = env_ceilings(20_000 if args.quick else 200_000, 2_000 if args.quick else 20_000)
        budgets = {"CartPole-v1": args.cartpole_steps, "HalfCheetah-v5": args.cheetah_steps}
    if alone:
        pass
    elif torch.cuda.is_available() or args.force_breakout:
        budgets["ALE/Breakout-v5"] = args.breakout_steps
    else:
        print("note: no CUDA device: Breakout throughput comparison skipped (GPU only)")

    with tempfile.TemporaryDirectory(prefix="ppo_bench_") as tmp:
        workdir = Path(tmp)
        raw: dict[str, list[dict[str, Any]]] = {}
        for env_id, budget in budgets.items():
            steps = rounded_steps(env_id, budget)
            runners = [("ppo_lab", run_ppo_lab)] + ([("sb3", run_sb3)] if with_sb3 else [])
            per_prog: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in runners}
            for rnd in range(args.repeats):
                for name, runner in runners:
                    row = runner(env_id, steps, args.seed, workdir)
                    per_prog[name].append(row)
                    note = (f"error:\n{row['error']}" if "error" in row else
                            f"wall {row['process_wall_s']:.1f} s, {row['process_sps']:,.0f} SPS, "
                            f"eval {row['eval_return']:.1f}")
                    print(f"  {env_id} round {rnd + 1} {name}: {note}", flush=True)
            res = {name: summarize(rows) for name, rows in per_prog.items()}
            a, b = res["ppo_lab"].get("process_sps"), res.get("sb3", {}).get("process_sps")
            res["ratio_process_sps"] = a / b if a and b else None
            ta, tb = res["ppo_lab"].get("time_to_target_s"), res.get("sb3", {}).get("time_to_target_s")
            res["ratio_time_to_target"] = tb / ta if ta and tb else None
            report["results"][env_id] = res
            raw[env_id] = [r for rows in per_prog.values() for r in rows]
        report["runs"] = raw

        if (args.recurrent or args.recurrent_only) and not args.population_only:
            print("recurrent pairing ...", flush=True)
            with_contrib = with_sb3 and importlib.util.find_spec("sb3_contrib") is not None
            if with_sb3 and not with_contrib:
                print("note: sb3-contrib is not installed (pip install -e \".[bench]\"); ppo_lab's LSTM runs alone")
            report["recurrent"] = recurrent_pairing(args.recurrent_steps, args.seed, workdir, with_contrib)

        if args.population or args.population_only:
            print("population sweeps ...", flush=True)
            report["population"] = population_sweeps(args.population_cases.split(","), args.population_seeds,
                                                     workdir, args.repeats)

        report["memory"] = {}
        if not args.skip_atari_memory and not alone:
            print("Breakout peak-RSS run ...", flush=True)
            report["memory"]["atari"] = atari_memory(workdir)
        if args.default_runs:
            print("default train.py runs ...", flush=True)
            report["default_runs"] = default_runs([1, 2, 3], workdir)

    report["targets"] = targets(report)
    print_tables(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
