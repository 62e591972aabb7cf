"""Policy export: ``python -m ppo_lab.export <run dir> format=onnx|torchscript`` writes one file
mapping a raw observation to the deterministic action, observation normalization folded in.

onnxruntime reproduces ``Agent.predict`` on 1,000 observations (discrete: identical; continuous:
within 1e-5), the TorchScript file gives the same actions in a process that never imports
ppo_lab, and what cannot be exported is refused with a message naming what and why.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_lab
from conftest import ROOT
from ppo_lab.api.export import DeterministicPolicy, export, export_onnx, export_torchscript
from ppo_lab.config import ConfigError
from ppo_lab.policies.actor_critic import ActorCritic

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

N_OBS = 1000
CONTINUOUS_TOL = 1e-5
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}


class NoisyKnobs(gym.Env):
    """MultiDiscrete([3, 2]) with observations far from zero mean / unit std (so the folded-in
    normalization matters): reward 1 when the first knob matches the sign of obs[0]."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def _obs(self):
        self.obs = self.np_random.normal([2.0, -1.0, 0.5], [3.0, 0.5, 10.0]).astype(np.float32)
        return self.obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = float(action[0] == (2 if self.obs[0] > 0 else 0))
        return self._obs(), reward, False, self.t >= 16, {}


def tiny(overrides, run_dir):
    ppo_lab.train([*overrides, "debug=fast", "total_timesteps=512"], run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs: CartPole (Discrete, raw obs), NoisyKnobs (MultiDiscrete, normalized obs),
    Pendulum (Box, normalized obs)."""
    base = tmp_path_factory.mktemp("export")
    gym.register("NoisyKnobs-v0", entry_point=NoisyKnobs, max_episode_steps=16)
    try:
        yield {
            "cartpole": tiny([], base / "cartpole"),
            "knobs": tiny(["env.id=NoisyKnobs-v0", "env.vectorization=sync", "env.normalize_obs=true"], base / "knobs"),
            "pendulum": tiny(["env=pendulum"], base / "pendulum"),
        }
    finally:
        gym.registry.pop("NoisyKnobs-v0")


def sampled_obs(agent, n=N_OBS, seed=0):
    space = agent.observation_space
    space.seed(seed)
    return np.stack([space.sample() for _ in range(n)]).astype(np.float32)


def rollout_obs(agent, n=300, seed=3):
    """Raw observations of the agent's own env, acted on with ``predict``."""
    env = agent.make_env()
    obs, _ = env.reset(seed=seed)
    seen = []
    while len(seen) < n:
        seen.append(obs)
        obs, _, terminated, truncated, _ = env.step(agent.predict(obs)[0])
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.asarray(seen, dtype=np.float32)


def run_onnx(path, obs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"] and [o.name for o in session.get_outputs()] == ["action"]
    return session.run(["action"], {"obs": obs})[0]


@pytest.mark.parametrize("name,shape", [("cartpole", (N_OBS,)), ("knobs", (N_OBS, 2))])
def test_onnx_discrete_actions_are_identical_to_predict(runs, name, shape, tmp_path):
    agent = ppo_lab.load(runs[name])
    path = export_onnx(agent, tmp_path / "policy.onnx")
    obs = sampled_obs(agent)
    if name == "knobs":  # normalized: also the real observation distribution, and obs beyond clip_obs
        assert agent.normalization["obs"]["mean"].shape == (3,)
        obs = np.concatenate([obs, rollout_obs(agent), obs * 1e4])
    actions = run_onnx(path, obs)
    expected = agent.predict(obs)[0]
    assert actions.dtype == np.int64 and actions.shape[1:] == shape[1:] and len(actions) == len(obs)
    np.testing.assert_array_equal(actions, expected)
    assert len(np.unique(expected.reshape(len(obs), -1), axis=0)) > 1  # not a constant policy
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["ppo_lab.obs_normalization_folded_in"] == ("true" if name == "knobs" else "false")
    assert meta["ppo_lab.env_id"] == agent.cfg.env.id


def test_onnx_continuous_actions_match_predict_with_the_normalization_folded_in(runs, tmp_path):
    agent = ppo_lab.load(runs["pendulum"])
    assert agent.normalization["obs"] is not None
    obs = np.concatenate([sampled_obs(agent), rollout_obs(agent)])
    actions = run_onnx(export_onnx(agent, tmp_path / "policy.onnx"), obs)
    expected = agent.predict(obs)[0]
    assert actions.dtype == np.float32 and actions.shape == expected.shape == (len(obs), 1)
    diff = float(np.abs(actions - expected).max())
    print(f"pendulum onnx max |diff| = {diff:.3g}")
    assert diff <= CONTINUOUS_TOL
    raw = np.clip(agent.network.inference_policy().act(obs, None, True)[0], -2, 2)
    assert np.abs(raw - expected).max() > 1e-3  # the normalization made a difference
    # Means beyond the bounds: the file clips them as predict does.
    with torch.no_grad():
        agent.network.policy_head.bias += 2.0
    clipped = run_onnx(export_onnx(agent, tmp_path / "shifted.onnx"), obs)
    expected = agent.predict(obs)[0]
    assert (expected == 2.0).mean() > 0.1 and float(np.abs(clipped - expected).max()) <= CONTINUOUS_TOL


def test_torchscript_runs_in_a_process_that_never_imports_ppo_lab(runs, tmp_path):
    cases = {}
    for name, run in runs.items():
        agent = ppo_lab.load(run)
        obs = sampled_obs(agent, seed=5)
        path = export_torchscript(agent, tmp_path / f"{name}.pt")
        np.save(tmp_path / f"{name}_obs.npy", obs)
        cases[name] = (path, agent.predict(obs)[0])
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import torch
        for name in {sorted(cases)!r}:
            policy = torch.jit.load(name + ".pt")
            with torch.no_grad():
                action = policy(torch.from_numpy(np.load(name + "_obs.npy"))).numpy()
            np.save(name + "_action.npy", action)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("ppo_lab", "gymnasium", "hydra"))
        assert not leaked, leaked
        print("ok")
    """)
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    for name, (_, expected) in cases.items():
        actions = np.load(tmp_path / f"{name}_action.npy")
        assert actions.dtype == expected.dtype and actions.shape == expected.shape
        if name == "pendulum":
            diff = float(np.abs(actions - expected).max())
            print(f"pendulum torchscript max |diff| = {diff:.3g}")
            assert diff <= CONTINUOUS_TOL
        else:
            np.testing.assert_array_equal(actions, expected)
    extra = {"ppo_lab.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "torch.jit.load is deprecated"
        torch.jit.load(str(cases["pendulum"][0]), _extra_files=extra)
    assert json.loads(extra["ppo_lab.json"])["ppo_lab.env_id"] == "Pendulum-v1"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ppo_lab.export", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=ENV)


def test_cli_writes_the_file_and_refuses_an_unknown_format(runs, tmp_path):
    run = runs["cartpole"]
    proc = cli(run, "format=onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = run / "export" / "policy.onnx"
    assert proc.stdout.strip().splitlines()[-1] == str(written) and written.is_file()
    agent = ppo_lab.load(run)
    obs = sampled_obs(agent, 64)
    np.testing.assert_array_equal(run_onnx(written, obs), agent.predict(obs)[0])
    proc = cli(run / "checkpoints" / "best.pt", "format=torchscript", f"out={tmp_path / 'best.pt'}", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "best.pt").is_file(), proc.stderr[-2000:]
    proc = cli(run, "format=tflite", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: format='tflite' is not allowed: onnx or torchscript"


def test_export_api_defaults_and_bad_options(runs):
    run = runs["cartpole"]
    assert export(run, "torchscript") == run / "export" / "policy.pt" and (run / "export" / "policy.pt").is_file()
    assert export(run, "onnx", checkpoint="best") == run / "export" / "policy_best.onnx"
    with pytest.raises(ConfigError, match="format='tflite' is not allowed: onnx or torchscript"):
        export(run, "tflite")
    from ppo_lab.api.export import parse_options
    with pytest.raises(ConfigError, match="format= is required"):
        parse_options([])
    with pytest.raises(ConfigError, match="unknown option opset=; allowed: format=, out=, checkpoint="):
        parse_options(["format=onnx", "opset=12"])


def test_onnx_without_the_extra_is_refused_naming_the_install(runs, tmp_path, monkeypatch):
    agent = ppo_lab.load(runs["cartpole"])
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ConfigError, match=re.escape('format=onnx needs the onnx package: pip install -e ".[export]"')):
        export_onnx(agent, tmp_path / "policy.onnx")
    assert not (tmp_path / "policy.onnx").exists()


class BranchOnValues(ActorCritic):
    """Python control flow on a tensor's value: a trace would freeze one branch."""

    def forward(self, obs):
        params, value = super().forward(obs)
        if obs.sum() > 0:
            params = -params
        return params, value


class ItemInForward(ActorCritic):
    """``.item()``: a Python number, a constant in any trace."""

    def forward(self, obs):
        params, value = super().forward(obs)
        return params * obs.abs().max().item(), value


class NumpyForward(ActorCritic):
    """A forward through numpy: invisible to the tracer."""

    def forward(self, obs):
        params, value = super().forward(obs)
        return torch.from_numpy(np.tanh(params.detach().numpy())), value


@pytest.mark.parametrize("network_class", [BranchOnValues, ItemInForward, NumpyForward])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_network_whose_forward_does_not_trace_is_refused(runs, network_class, fmt, tmp_path):
    agent = ppo_lab.load(runs["cartpole"])
    agent.network = network_class(agent.observation_space, agent.action_space).eval()
    write = export_onnx if fmt == "onnx" else export_torchscript
    with pytest.raises(ConfigError, match=f"cannot export network {network_class.__name__}: its forward does not "
                                          r"trace at .*test_export.py:\d+ \(TracerWarning: Converting a tensor to a "
                                          r".*without Python control flow on tensor values, .item\(\)"):
        write(agent, tmp_path / "policy")
    assert not (tmp_path / "policy").exists()


def test_a_pixel_policy_takes_uint8_frames(runs, tmp_path):
    """A Nature-CNN policy (scaling by 1/255 inside): the file's input is uint8, its actions predict's."""
    agent = ppo_lab.load(runs["cartpole"])
    agent.observation_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    agent.action_space = gym.spaces.Discrete(6)
    torch.manual_seed(0)
    agent.network = ActorCritic(agent.observation_space, agent.action_space, kind="cnn", shared=True,
                                hidden_sizes=[64]).eval()
    with torch.no_grad():
        agent.network.policy_head.weight.mul_(100.0)  # spread the logits: many different argmaxes
    session = ort.InferenceSession(str(export_onnx(agent, tmp_path / "pixels.onnx")),
                                   providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    frames = np.random.default_rng(0).integers(0, 256, (64, 4, 84, 84), dtype=np.uint8)
    expected = agent.predict(frames)[0]
    np.testing.assert_array_equal(session.run(["action"], {"obs": frames})[0], expected)
    assert len(np.unique(expected)) > 1


def test_an_unknown_action_distribution_is_refused(runs):
    agent = ppo_lab.load(runs["cartpole"])
    agent.network.dist = object()
    with pytest.raises(ConfigError, match="its action distribution object has no deterministic action"):
        DeterministicPolicy(agent)


def test_readme_export_snippet_runs_on_an_exported_file(runs, tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert readme.index("\n## Export\n") < readme.index("\n## Evaluate\n")
    section = readme.split("\n## Export\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert "python -m ppo_lab.export" in section and '"policy.onnx"' in code
    agent = ppo_lab.load(runs["cartpole"])
    export_onnx(agent, tmp_path / "policy.onnx")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    obs, _ = gym.make("CartPole-v1").reset(seed=0)
    assert int(proc.stdout.split()[-1]) == int(agent.predict(obs)[0])
