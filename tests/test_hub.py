"""Hub packages: ``python -m ppo_lab.hub package`` writes a model repo's files, ``ppo_lab.load`` of
the package dir gives back the same agent; ``push`` and ``hf://`` run against fakes of
``huggingface_hub`` (these machines have no network)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ppo_lab
from conftest import ROOT
from ppo_lab.api import hub
from ppo_lab.config import ConfigError
from ppo_lab.io.checkpoint import CheckpointError, load_checkpoint

CARTPOLE = ["debug=fast", "total_timesteps=512"]
CHEETAH = ["env=halfcheetah", "total_timesteps=4096", "agent.num_minibatches=4", "logger=none",
           "progress=false", "eval_episodes=1"]
#: The cheetah's package: a smaller evaluation than the default 3 seeds x 5 episodes, and no
#: replay (headless MuJoCo renders in software through EGL: minutes per 1000-step episode; the
#: CartPole package has the replay).
CHEETAH_EVAL = ["eval_seeds=[1,2]", "eval_episodes=2", "video=false"]


def hub_cli(args, cwd, env=None):
    """``python -m ppo_lab.hub <args>`` as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ppo_lab.hub", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180, env=full_env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A CartPole run and a normalized HalfCheetah run, each packaged through the CLI."""
    base = tmp_path_factory.mktemp("hub")
    out = {}
    for name, overrides, options in (("cartpole", CARTPOLE, []), ("cheetah", CHEETAH, CHEETAH_EVAL)):
        run_dir, pkg = base / name, base / f"{name}_pkg"
        ppo_lab.train(overrides, run_dir=run_dir)
        proc = hub_cli(["package", str(run_dir), str(pkg), *options], cwd=base)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = (run_dir, pkg, proc)
    return out


def _card(pkg):
    text = (pkg / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_package_writes_the_files_a_model_repo_needs(runs):
    run_dir, pkg, proc = runs["cartpole"]
    assert sorted(p.name for p in pkg.iterdir()) == sorted(hub.PACKAGE_FILES)
    assert "wrote" in proc.stdout and "warning:" not in proc.stderr
    state = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    # Weights: the checkpoint's tensors under their own names, plus the normalization statistics.
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(pkg / "model.safetensors"))
    model = {k: v for k, v in tensors.items() if not k.startswith("normalization.")}
    assert set(model) == set(state["model"])
    assert all(torch.equal(model[k], state["model"][k]) for k in model)
    with safe_open(str(pkg / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["global_step"] == "512" and f.metadata()["env_id"] == "CartPole-v1"
    # Config: the checkpoint's resolved config; checkpoint.json: where the weights came from.
    assert yaml.safe_load((pkg / "config.yaml").read_text()) == state["config"]
    info = json.loads((pkg / "checkpoint.json").read_text())
    assert info["global_step"] == 512 and info["source_checkpoint"].endswith("checkpoints/final.pt")
    # The replay: an MP4 of one episode.
    assert (pkg / "replay.mp4").read_bytes()[4:8] == b"ftyp"


def test_the_model_card_has_hub_metadata_the_evaluation_the_command_and_a_load_snippet(runs):
    from huggingface_hub import ModelCard

    run_dir, pkg, _ = runs["cartpole"]
    evaluation = json.loads((pkg / "checkpoint.json").read_text())["evaluation"]
    # The numbers are a real evaluation: 3 seeds x 5 episodes of the run's final checkpoint.
    agent = ppo_lab.load(run_dir)
    returns = [e["return"] for s in hub.DEFAULT_EVAL_SEEDS for e in agent.evaluate(5, s)["episodes"]]
    assert evaluation["eval_seeds"] == list(hub.DEFAULT_EVAL_SEEDS) and len(evaluation["episodes"]) == 15
    assert evaluation["mean_return"] == pytest.approx(np.mean(returns))
    assert evaluation["std_return"] == pytest.approx(np.std(returns))
    mean_std = f"{evaluation['mean_return']:.2f} ± {evaluation['std_return']:.2f}"
    # Front matter as the Hub reads it (huggingface_hub's own parser, no network).
    card = ModelCard.load(pkg / "README.md")
    assert card.data.library_name == "ppo_lab"
    assert {"reinforcement-learning", "ppo", "CartPole-v1"} <= set(card.data.tags)
    result, = card.data.eval_results
    assert result.dataset_name == "CartPole-v1" and result.metric_type == "mean_reward"
    assert result.metric_value == mean_std.replace("±", "+/-")
    _, body = _card(pkg)
    assert "CartPole-v1" in body and mean_std in body and "clipped surrogate" in body
    assert "python train.py debug=fast total_timesteps=512\n" in body
    assert 'agent = ppo_lab.load("hf://<user/name>")' in body and "agent.predict(obs)" in body
    assert "total_timesteps: 512" in body and "```yaml" in body  # the resolved config
    assert "replay.mp4" in body and "policy.onnx" in body
    # The snippet runs, on the package dir in place of the repo.
    snippet = body.split("```python\n", 1)[1].split("```", 1)[0]
    exec(snippet.replace("hf://<user/name>", str(pkg)), {})


@pytest.mark.parametrize("name", ["cartpole", "cheetah"])
def test_load_of_the_package_is_the_checkpoints_agent(runs, name):
    run_dir, pkg, proc = runs[name]
    original, packaged = ppo_lab.load(run_dir), ppo_lab.load(pkg)
    assert packaged.run_dir == pkg.resolve() and packaged.global_step == original.global_step
    assert packaged.cfg.env.id == original.cfg.env.id
    assert original.normalization.keys() == packaged.normalization.keys()
    for group, stats in original.normalization.items():
        assert stats["count"] == packaged.normalization[group]["count"]
        assert np.array_equal(stats["mean"], packaged.normalization[group]["mean"])
        assert np.array_equal(stats["var"], packaged.normalization[group]["var"])
    space = original.observation_space
    space.seed(0)
    obs = np.stack([space.sample() for _ in range(100)])
    if name == "cheetah":
        assert "obs" in packaged.normalization  # the normalized run: predict applies the statistics
        obs = obs.clip(-5, 5)
    assert np.array_equal(original.predict(obs)[0], packaged.predict(obs)[0])
    assert original.evaluate(episodes=2, seed=5) == packaged.evaluate(episodes=2, seed=5)
    # The ONNX export in the package is the same deterministic policy.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(pkg / "policy.onnx"))
    onnx_action, = session.run(None, {"obs": obs.astype(np.float32)})
    np.testing.assert_allclose(onnx_action, packaged.predict(obs)[0], rtol=1e-5, atol=1e-5)
    if name == "cheetah":
        assert not (pkg / "replay.mp4").exists() and "warning:" not in proc.stderr  # video=false
        assert json.loads((pkg / "checkpoint.json").read_text())["evaluation"]["eval_seeds"] == [1, 2]


class FakeHub:
    """Records the calls ``push`` / ``hf://`` make to huggingface_hub, instead of the network."""

    def __init__(self, monkeypatch, download_dir=None, fail=None):
        import huggingface_hub

        self.calls, self.download_dir, self.fail = [], download_dir, fail
        monkeypatch.setattr(huggingface_hub, "create_repo", self.create_repo)
        monkeypatch.setattr(huggingface_hub, "upload_folder", self.upload_folder)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        if self.fail:
            raise self.fail
        # What would be uploaded, read while the folder exists (push may package into a temp dir).
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, {"folder_path": folder_path, "files": files, **kwargs}))

    def snapshot_download(self, repo_id, **kwargs):
        self.calls.append(("snapshot_download", repo_id, kwargs))
        return str(self.download_dir)


def test_push_of_a_package_creates_the_repo_and_uploads_the_folder(runs, monkeypatch, capsys):
    _, pkg, _ = runs["cartpole"]
    fake = FakeHub(monkeypatch)
    assert hub.main(["push", str(pkg), "repo_id=me/ppo-cartpole"]) == 0
    (kind1, repo1, create), (kind2, repo2, upload) = fake.calls
    assert (kind1, repo1, create["exist_ok"]) == ("create_repo", "me/ppo-cartpole", True)
    assert (kind2, repo2, upload["folder_path"]) == ("upload_folder", "me/ppo-cartpole", str(pkg))
    assert set(upload["files"]) == set(hub.PACKAGE_FILES)
    assert "https://huggingface.co/me/ppo-cartpole" in capsys.readouterr().out


def test_push_of_a_run_dir_packages_it_for_that_repo_first(runs, monkeypatch):
    run_dir, _, _ = runs["cartpole"]
    fake = FakeHub(monkeypatch)
    assert hub.main(["push", str(run_dir), "repo_id=me/ppo-cartpole", "eval_seeds=[3]", "eval_episodes=1",
                     "video=false", "onnx=false", "private=true"]) == 0
    (_, _, create), (_, repo_id, upload) = fake.calls
    assert create["private"] is True and repo_id == "me/ppo-cartpole"
    assert {"README.md", "model.safetensors", "config.yaml", "checkpoint.json"} == set(upload["files"])
    assert b'ppo_lab.load("hf://me/ppo-cartpole")' in upload["files"]["README.md"]
    assert not os.path.exists(upload["folder_path"])  # the temporary package is gone


def test_a_failed_upload_is_one_error_line_and_status_1(runs, monkeypatch, capsys):
    _, pkg, _ = runs["cartpole"]
    FakeHub(monkeypatch, fail=OSError("no network"))
    assert hub.main(["push", str(pkg), "repo_id=me/ppo-cartpole"]) == 1
    assert capsys.readouterr().err.strip() == "error: push to me/ppo-cartpole failed: no network"


def test_hf_url_downloads_the_repo_and_loads_the_package(runs, monkeypatch, tmp_path):
    run_dir, pkg, _ = runs["cartpole"]
    snapshot = tmp_path / "snapshot"
    shutil.copytree(pkg, snapshot)  # what snapshot_download would leave in its cache
    fake = FakeHub(monkeypatch, download_dir=snapshot)
    agent = ppo_lab.load("hf://me/ppo-cartpole")
    assert [c[:2] for c in fake.calls] == [("snapshot_download", "me/ppo-cartpole")]
    assert agent.run_dir == snapshot.resolve()
    obs = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    assert np.array_equal(agent.predict(obs)[0], ppo_lab.load(run_dir).predict(obs)[0])
    fake.download_dir = tmp_path  # a repo without a package
    with pytest.raises(CheckpointError, match="not a ppo_lab package"):
        ppo_lab.load("hf://me/other")
    with pytest.raises(ConfigError, match="repo_id"):
        ppo_lab.load("hf://no-slash")
    with pytest.raises(ConfigError, match="one set of weights"):
        ppo_lab.load(pkg, checkpoint="best")


def test_bad_input_is_one_error_line_and_status_2(runs, tmp_path, capsys):
    run_dir, pkg, _ = runs["cartpole"]
    missing = hub_cli(["package", str(tmp_path / "nope"), str(tmp_path / "out")], cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "out").exists()
    no_repo = hub_cli(["push", str(pkg)], cwd=tmp_path)
    assert no_repo.returncode == 2 and no_repo.stderr.strip() == \
        "error: push needs repo_id=<user or org>/<name> (the Hub model repo)"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for args, message in (
        (["package", str(run_dir), str(tmp_path / "busy")], "is not empty and holds no package"),
        (["package", str(run_dir), str(tmp_path / "o"), "eval_episodes=0"], "eval_episodes=0 is not allowed"),
        (["package", str(run_dir), str(tmp_path / "o"), "episodes=3"], "unknown option 'episodes'"),
        (["package", str(run_dir), str(tmp_path / "o"), "checkpoint=worst"], "checkpoint='worst' is not allowed"),
        (["package", str(pkg), str(tmp_path / "o")], "is already a Hub package"),
        (["push", str(pkg), "repo_id=no-slash"], "repo_id='no-slash' is not allowed"),
        (["push", str(tmp_path / "nope"), "repo_id=me/x"], "does not exist"),
    ):
        assert hub.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (args, err)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and not (tmp_path / "o").exists()
