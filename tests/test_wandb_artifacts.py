"""``logger.wandb.log_model=true``: final.pt and best.pt become a W&B model artifact of the run,
recorded in the offline run (and staged for ``wandb sync``); the default logs none."""

import base64
import hashlib
import json

import pytest

from conftest import run_script
from wandb_offline import offline_run, wandb_records

TINY = ["debug=fast", "total_timesteps=512", "logger=wandb", "hydra.run.dir=run"]


def _train(tmp_path, extra):
    env = {"WANDB_DATA_DIR": str(tmp_path / "wandb_data")}  # where W&B stages artifact files
    proc = run_script("train.py", [*TINY, *extra], cwd=tmp_path, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = tmp_path / "run"
    run_file, = job.glob("wandb/offline-run-*/run-*.wandb")
    artifacts = [r.artifact for r in wandb_records(run_file) if r.WhichOneof("record_type") == "artifact"]
    return job, offline_run(job), artifacts


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_log_model_records_final_and_best_as_a_model_artifact_in_the_offline_run(tmp_path):
    job, run, artifacts = _train(tmp_path, ["logger.wandb.log_model=true"])
    assert len(artifacts) == 1
    art = artifacts[0]
    assert art.type == "model" and art.name == f"model-{run['id']}" and art.run_id == run["id"]
    assert {"latest", "step-512"} <= set(art.aliases)
    # The manifest holds the two checkpoints as they are on disk at the end (written before
    # summary), and W&B staged a copy of each, which `wandb sync` uploads later.
    entries = {c.path: c for c in art.manifest.contents}
    assert set(entries) == {"final.pt", "best.pt"}
    for name, entry in entries.items():
        data = (job / "checkpoints" / name).read_bytes()
        assert entry.size == len(data) and entry.digest == _md5_b64(data)
        assert str(tmp_path / "wandb_data") in entry.local_path
        with open(entry.local_path, "rb") as staged:
            assert staged.read() == data
    # Metadata: the final evaluation, as summary.json has it, and the env.
    metadata = json.loads(art.metadata)
    summary = json.loads((job / "summary.json").read_text())
    assert metadata["eval/episodic_return"] == pytest.approx(summary["eval/episodic_return"])
    assert metadata["eval/best_episodic_return"] == pytest.approx(summary["eval/best_episodic_return"])
    assert metadata["global_step"] == 512 and metadata["env_id"] == "CartPole-v1"
    assert run["summary"]["eval/episodic_return"] == pytest.approx(metadata["eval/episodic_return"])


def test_by_default_no_artifact_is_logged(tmp_path):
    job, run, artifacts = _train(tmp_path, [])
    assert artifacts == [] and run["exit_code"] == 0
    assert (job / "checkpoints" / "final.pt").is_file()
    assert not list((tmp_path / "wandb_data").rglob("staging/*"))
