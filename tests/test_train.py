"""End-to-end training runs, as a user runs them."""

import re
from pathlib import Path

import pytest
import yaml

from conftest import compose_cfg, run_script
from ppo_lab.io.checkpoint import load_checkpoint
from ppo_lab.commands.train import train


def only_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_readme_default_run_solves_cartpole_with_offline_wandb(tmp_path):
    """`python train.py` exactly as the README says: CartPole-v1, 100k steps, seed 1, W&B offline."""
    # No WANDB_MODE and no API key: ppo_lab must choose offline by itself.
    proc = run_script("train.py", [], cwd=tmp_path,
                      env={"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"eval/episodic_return=([\d.]+) .* at global_step=(\d+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) >= 475.0
    assert int(match.group(2)) <= 100_000
    run = only_run_dir(tmp_path)
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "config.yaml").is_file()
    # A real offline W&B run: its directory and its .wandb data file.
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    ckpt = load_checkpoint(run / "checkpoints" / "final.pt")
    assert ckpt["global_step"] == int(match.group(2))
    assert {"model", "optimizer", "config", "global_step", "normalization", "rng"} <= set(ckpt)
    assert ckpt["config"]["env"]["id"] == "CartPole-v1"
    assert (run / "checkpoints" / "best.pt").is_file()


def test_lunarlander_with_clip_alias_as_typed_by_a_user(tmp_path):
    proc = run_script("train.py", ["env=lunarlander", "agent.clip=0.1", "total_timesteps=20000",
                                   "logger=none", "eval_episodes=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path)
    hydra_cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    # The alias is rewritten to its standard key before Hydra composes: every record of the run
    # (and `--cfg job`) shows the value the run uses.
    assert hydra_cfg["agent"]["clip_coef"] == 0.1 and hydra_cfg["agent"]["clip"] is None
    assert "agent.clip_coef=0.1" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert resolved["agent"]["clip_coef"] == 0.1
    assert resolved["env"]["id"] == "LunarLander-v3"
    assert load_checkpoint(run / "checkpoints" / "final.pt")["config"]["agent"]["clip_coef"] == 0.1


# mlp_separate is the default network: test_readme_default_run_solves_cartpole_with_offline_wandb
# learns it in CI, so its run here is in the slow set (suite time).
@pytest.mark.parametrize("network", ["mlp_shared", pytest.param("mlp_separate", marks=pytest.mark.slow)])
def test_both_network_layouts_learn_cartpole(tmp_path, network):
    cfg = compose_cfg([f"network={network}", "logger=none", "progress=false", "total_timesteps=40000",
                       "eval_episodes=5"])
    result = train(cfg, tmp_path)
    # An untrained CartPole policy scores ~10-40; both layouts must clearly learn in 40k steps.
    assert result["eval/episodic_return"] >= 150, result


def test_continuous_pendulum_trains(tmp_path):
    cfg = compose_cfg(["env=pendulum", "logger=none", "progress=false", "total_timesteps=8192",
                       "agent.num_steps=512", "agent.num_minibatches=8", "eval_episodes=2"])
    result = train(cfg, tmp_path)
    assert -2000 < result["eval/episodic_return"] <= 0
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert any('"train/action_std"' in r for r in rows)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "final.pt")
    assert set(ckpt["normalization"]) == {"obs", "reward"}
    assert ckpt["normalization"]["obs"]["mean"].shape == (3,)


def test_checkpoints_every_n_updates_keep_last(tmp_path, tiny_overrides):
    cfg = compose_cfg(tiny_overrides + ["total_timesteps=1280", "checkpoint_interval=2", "keep_last=2"])
    train(cfg, tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["best.pt", "final.pt", "update_000008.pt", "update_000010.pt"]
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


def test_logger_none_runs_without_importing_wandb(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import sys, runpy\n"
        f"sys.argv = [{str(ROOT / 'train.py')!r}, 'debug=fast', 'hydra.run.dir=run']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
        "finally:\n"
        "    print('WANDB_IMPORTED', 'wandb' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WANDB_IMPORTED False" in proc.stdout
    assert not (tmp_path / "run" / "wandb").exists()
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_tensorboard_sink_writes_event_files_with_the_same_metric_names(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_cfg(["debug=fast", "logger=tensorboard", "total_timesteps=512"]), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/approx_kl", "train/clipfrac", "time/sps", "eval/episodic_return"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [128, 256, 384, 512]


def test_torch_threads_default_is_one_for_mlp_and_every_usable_core_for_cnn():
    import os

    from conftest import compose_cfg
    from ppo_lab.config import to_typed
    from ppo_lab.training.runtime import resolve_torch_threads

    assert resolve_torch_threads(to_typed(compose_cfg([]))) == 1
    assert resolve_torch_threads(to_typed(compose_cfg(["env=breakout"]))) == len(os.sched_getaffinity(0))
    assert resolve_torch_threads(to_typed(compose_cfg(["env=breakout", "torch_threads=1"]))) == 1
    assert resolve_torch_threads(to_typed(compose_cfg(["torch_threads=3"]))) == 3


def test_a_runs_thread_count_holds_numpys_blas_too():
    """``seed_everything`` sets torch's threads and numpy's BLAS threads alike (in a fresh process:
    the limits are process-wide). Unlimited, OpenBLAS starts a thread per core, and population
    workers' threads would oversubscribe the cores."""
    import subprocess
    import sys

    from conftest import ROOT

    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "import numpy, torch\n"
              "from threadpoolctl import threadpool_info\n"
              "from ppo_lab.training.runtime import seed_everything\n"
              "seed_everything(1, int(sys.argv[1]), False)\n"
              "blas = [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
              "print(torch.get_num_threads(), len(blas), set(blas))")
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", script, str(threads)], capture_output=True, text=True,
                             check=True).stdout.split(maxsplit=2)
        assert out[0] == str(threads) and int(out[1]) >= 1 and out[2].strip() == f"{{{threads}}}"
