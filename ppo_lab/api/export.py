"""A trained policy as one self-contained file: ONNX or TorchScript, observation -> deterministic action.

``python -m ppo_lab.export <run dir> format=onnx|torchscript`` (or :func:`export` from Python)
writes ``<run dir>/export/policy.onnx`` or ``policy.pt``. The file holds the network's weights,
the run's frozen observation normalization (the saved running mean/var and ``env.clip_obs``,
folded in as constants) and the deterministic action rule (argmax / per-component argmax / the
Gaussian mean clipped to the action bounds), so it needs neither ppo_lab nor gymnasium to run:
``onnxruntime`` alone for ONNX, ``torch.jit.load`` alone for TorchScript.

The file's inputs and its output (``B`` is the batch size, dynamic):

* input ``obs``: ``(B, *obs_shape)`` raw observations as the env returns them; uint8 when the
  observation space is uint8 (pixels), float32 otherwise.
* input ``action_mask`` (only for a run that trained with action masks, ``Agent.masked``):
  ``(B, n)`` int8 (``(B, sum(nvec))`` for MultiDiscrete), 1 = valid, as the env's
  ``info["action_mask"]``; masked logits are set to -1e8 before the argmax, so the output is
  what ``Agent.predict(obs, action_masks=mask)`` returns.
* output ``action``: int64 ``(B,)`` (Discrete), int64 ``(B, k)`` (MultiDiscrete), int64
  ``(B, n)`` bits (MultiBinary) or float32 ``(B, d)`` clipped to the Box bounds (continuous):
  what ``Agent.predict(obs)`` returns.

Only feed-forward policies are exported: a recurrent one (``network=lstm|gru``) is refused, since
the file would need the state as a second input and output (use ``ppo_lab.load(...).predict``
with ``state`` and ``episode_start`` instead).

Refused, with a :class:`~ppo_lab.config.ConfigError` naming what and why: a format other than
``onnx`` / ``torchscript``; ONNX without the ``export`` extra (``onnx``); a network whose forward
does not trace (Python control flow on tensor values, ``.item()``, numpy inside ``forward``, or a
forward that is not torch at all), an ONNX exporter failure (an operator ONNX lacks); an action
distribution other than ppo_lab's four; an observation space that is not one ``Box`` (a ``Dict``
observation, a Tuple one included, is refused: the file has one input, not one per key); a
recurrent network.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from ppo_lab.api.agent import OBS_EPSILON, Agent, load
from ppo_lab.config import ConfigError
from ppo_lab.policies.distributions import MASKED_LOGIT, Bernoulli, Categorical, DiagGaussian, MultiCategorical
from ppo_lab.policies.protocol import is_recurrent

#: Allowed values of ``format=`` and the file suffix each writes.
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
#: ONNX opset of the written files (onnxruntime >= 1.12 runs it).
OPSET = 17
#: Names of the file's input and output, and of the mask input of a masked run.
INPUT_NAME, OUTPUT_NAME, MASK_NAME = "obs", "action", "action_mask"
#: What to install for ``format=onnx``.
ONNX_EXTRA = 'pip install -e ".[export]"'


class DeterministicPolicy(nn.Module):
    """An agent's network as ``obs -> deterministic action``, normalization folded in.

    ``forward(obs[, action_mask])``: ``obs`` ``(B, *obs_shape)``, uint8 for a uint8 observation
    space, else float32 (the env's raw observations), and for a masked run ``action_mask``
    ``(B, n)`` int8 (1 = valid) -> ``action`` int64 ``(B,)`` (Discrete), int64 ``(B, k)``
    (MultiDiscrete), int64 ``(B, n)`` (MultiBinary) or float32 ``(B, d)`` (Box, clipped to its
    bounds).

    The normalization is :meth:`Agent.normalize` op for op: the observation is cast to the dtype
    numpy computes ``(obs - mean) / sqrt(var + 1e-8)`` in (float64 for the saved float64
    statistics), divided by the precomputed std, cast to float32 and clipped to
    ``+-env.clip_obs``; so discrete actions are identical to ``agent.predict``'s, and continuous
    ones equal up to the float32 rounding of the forward pass.

    Args:
        agent: the loaded agent (its network is used on the CPU, in eval mode).

    Raises:
        ConfigError: the observation space is not a ``Box``, the network is recurrent, or the
            network's ``dist`` is not ppo_lab's Categorical, MultiCategorical, Bernoulli or DiagGaussian.
    """

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        network = agent.network
        name = type(network).__name__
        if not isinstance(agent.observation_space, gym.spaces.Box):
            raise ConfigError(f"cannot export {name}: observation space {agent.observation_space} is not a Box "
                              "(the exported file takes one obs tensor; Dict observations have no per-key inputs)")
        if is_recurrent(network):
            raise ConfigError(f"cannot export {name}: it is recurrent (network.core=lstm|gru; state of "
                              f"{network.recurrent_state_size} floats per env) and the exported file takes one obs "
                              "tensor; use ppo_lab.load(run_dir).predict(obs, state, episode_start) instead")
        if any(p.device.type != "cpu" for p in network.parameters()):
            network = copy.deepcopy(network).cpu()
        self.network = network.eval()
        self.input_dtype = np.uint8 if agent.observation_space.dtype == np.uint8 else np.float32
        self.obs_shape = tuple(agent.observation_space.shape)
        dist = getattr(network, "dist", None)
        if isinstance(dist, DiagGaussian):
            self.kind = "continuous"
            space = agent.action_space
            self.register_buffer("low", torch.as_tensor(np.asarray(space.low, np.float32)))
            self.register_buffer("high", torch.as_tensor(np.asarray(space.high, np.float32)))
        elif isinstance(dist, MultiCategorical):
            self.kind, self.nvec = "multidiscrete", list(dist.nvec)
        elif isinstance(dist, Categorical):
            self.kind = "discrete"
        elif isinstance(dist, Bernoulli):
            self.kind = "multibinary"
        else:
            raise ConfigError(f"cannot export {name}: its action distribution {type(dist).__name__} has no "
                              "deterministic action here; allowed: ppo_lab's Categorical, MultiCategorical, "
                              "Bernoulli, DiagGaussian")
        #: The file takes an ``action_mask`` input (the run trained with masks).
        self.masked = bool(getattr(agent, "masked", False)) and self.kind in ("discrete", "multidiscrete")
        self.mask_width = int(sum(self.nvec)) if self.kind == "multidiscrete" else int(getattr(agent.action_space, "n", 0))
        stats = agent.normalization.get("obs")
        self.normalized = stats is not None
        if self.normalized:
            mean, std = np.asarray(stats["mean"]), np.sqrt(np.asarray(stats["var"]) + OBS_EPSILON)
            dtype = np.result_type(self.input_dtype, mean.dtype, std.dtype)  # numpy's own promotion
            self.register_buffer("obs_mean", torch.as_tensor(mean.astype(dtype)))
            self.register_buffer("obs_std", torch.as_tensor(std.astype(dtype)))
            self.clip_obs = float(agent.cfg.env.clip_obs)

    def forward(self, obs: Tensor, action_mask: Optional[Tensor] = None) -> Tensor:
        """``obs`` ``(B, *obs_shape)`` uint8/float32 (and ``action_mask`` ``(B, n)`` int8 for a
        masked run) -> ``action`` (see the class docstring)."""
        x = obs
        if self.normalized:
            x = ((x.to(self.obs_mean.dtype) - self.obs_mean) / self.obs_std).to(torch.float32)
            x = torch.clamp(x, -self.clip_obs, self.clip_obs)
        elif x.dtype != torch.uint8:
            x = x.to(torch.float32)
        params = self.network(x)[0].to(torch.float32)
        if action_mask is not None:  # distributions.apply_mask_torch, as Agent.predict(action_masks=...)
            params = torch.where(action_mask != 0, params, torch.full_like(params, MASKED_LOGIT))
        if self.kind == "continuous":
            return torch.minimum(torch.maximum(params, self.low), self.high)  # np.clip(mean, low, high)
        if self.kind == "multidiscrete":
            return torch.stack([p.argmax(dim=-1) for p in torch.split(params, self.nvec, dim=-1)], dim=-1)
        if self.kind == "multibinary":
            return (params > 0).to(torch.int64)
        return params.argmax(dim=-1)

    def example_inputs(self, batch: int, seed: int = 0) -> Tensor:
        """A ``(batch, *obs_shape)`` input of the file's dtype, drawn uniformly-ish at random."""
        rng = np.random.default_rng(seed)
        if self.input_dtype == np.uint8:
            return torch.as_tensor(rng.integers(0, 256, (batch, *self.obs_shape), dtype=np.uint8))
        return torch.as_tensor(rng.standard_normal((batch, *self.obs_shape), dtype=np.float32))

    def example_args(self, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
        """The file's inputs for a batch: ``(obs,)``, or ``(obs, action_mask)`` for a masked run
        (a random int8 mask with the first action of each row, or component, valid)."""
        obs = self.example_inputs(batch, seed)
        if not self.masked:
            return (obs,)
        mask = np.random.default_rng(seed + 1).integers(0, 2, (batch, self.mask_width), dtype=np.int8)
        starts = np.concatenate([[0], np.cumsum(self.nvec)[:-1]]) if self.kind == "multidiscrete" else [0]
        mask[:, starts] = 1
        return obs, torch.as_tensor(mask)

    def input_names(self) -> list[str]:
        """``["obs"]``, or ``["obs", "action_mask"]`` for a masked run."""
        return [INPUT_NAME, MASK_NAME] if self.masked else [INPUT_NAME]


def metadata(agent: Agent, policy: DeterministicPolicy) -> dict[str, str]:
    """What the file was made from (ONNX ``metadata_props`` / TorchScript extra file ``ppo_lab.json``)."""
    return {
        "ppo_lab.checkpoint": str(agent.checkpoint), "ppo_lab.global_step": str(agent.global_step),
        "ppo_lab.env_id": str(agent.cfg.env.id), "ppo_lab.network": type(agent.network).__name__,
        "ppo_lab.observation_space": str(agent.observation_space), "ppo_lab.action_space": str(agent.action_space),
        "ppo_lab.obs_normalization_folded_in": str(policy.normalized).lower(),
        "ppo_lab.input": f"{INPUT_NAME}: (B, {', '.join(map(str, policy.obs_shape))}) {np.dtype(policy.input_dtype).name}"
                         + (f"; {MASK_NAME}: (B, {policy.mask_width}) int8, 1 = valid" if policy.masked else ""),
        "ppo_lab.output": f"{OUTPUT_NAME}: {_output_doc(policy)}",
    }


def _output_doc(policy: DeterministicPolicy) -> str:
    if policy.kind == "continuous":
        return f"(B, {policy.low.numel()}) float32, clipped to the action bounds"
    if policy.kind == "multidiscrete":
        return f"(B, {len(policy.nvec)}) int64"
    if policy.kind == "multibinary":
        return "(B, n) int64 bits"
    return "(B,) int64"


class _StrictTracing(warnings.catch_warnings):
    """Turn the tracer's "this trace might be incorrect" warnings from the user's code into
    errors (torch's own library warnings stay ignored, as torch does by default), and silence the
    legacy ONNX exporter's deprecation notices."""

    def __enter__(self) -> Any:
        out = super().__enter__()
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.(?!jit)")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        return out


def _untraceable(policy: DeterministicPolicy, exc: BaseException) -> ConfigError:
    """The refusal of an untraceable forward: the network's class, the tracer's own complaint
    (the TracerWarning behind the SystemError it surfaces as) and the line of the network's code."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    cause = next((e for e in chain if isinstance(e, Warning)), chain[-1])
    where = ""
    for e in chain:
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if "/torch/" not in f.filename.replace("\\", "/") and f.filename != __file__]
        if frames:
            where = f" at {frames[-1].filename}:{frames[-1].lineno}"
            break
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else "no message"
    return ConfigError(
        f"cannot export network {type(policy.network).__name__}: its forward does not trace{where} "
        f"({type(cause).__name__}: {message}); export needs a forward of torch tensor ops only, without "
        "Python control flow on tensor values, .item(), or numpy"
    )


def trace(policy: DeterministicPolicy) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``policy`` on a batch of 2, checked against eager on a batch of 5.

    Raises:
        ConfigError: the network's forward does not trace faithfully (naming its class).
    """
    try:
        with _StrictTracing(), torch.no_grad():
            return torch.jit.trace(policy, policy.example_args(2),
                                   check_inputs=[policy.example_args(5, seed=1)])
    except Exception as exc:  # the tracer raises many kinds: TracerWarning, TracingCheckError, RuntimeError...
        raise _untraceable(policy, exc) from exc


def export_torchscript(agent: Agent, path: str | Path) -> Path:
    """Write ``agent``'s deterministic policy as a TorchScript file (``torch.jit.save``).

    Load it with ``torch.jit.load(path)`` (no ppo_lab needed) and call it on a
    ``(B, *obs_shape)`` tensor (uint8 pixels or float32) to get the ``action`` tensor (int64
    ``(B,)`` / ``(B, k)``, or float32 ``(B, d)``). The file's extra file ``ppo_lab.json``
    holds :func:`metadata`.

    Raises:
        ConfigError: see :class:`DeterministicPolicy` and :func:`trace`.
    """
    policy = DeterministicPolicy(agent)
    traced = trace(policy)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "torch.jit.save is deprecated"
        torch.jit.save(traced, str(path), _extra_files={"ppo_lab.json": json.dumps(metadata(agent, policy))})
    return path


def export_onnx(agent: Agent, path: str | Path, opset: int = OPSET) -> Path:
    """Write ``agent``'s deterministic policy as an ONNX file, checked with ``onnx.checker``.

    Input ``obs`` ``(B, *obs_shape)`` (uint8 pixels or float32), output ``action`` (int64
    ``(B,)`` / ``(B, k)``, or float32 ``(B, d)``), ``B`` dynamic; :func:`metadata` in the
    model's ``metadata_props``. Exported with torch's TorchScript-based exporter
    (``dynamo=False``: the torch.export one needs ``onnxscript``).

    Raises:
        ConfigError: ``onnx`` is not installed (the ``export`` extra); the network does not trace
            or uses an operator the ONNX exporter cannot write; see also :class:`DeterministicPolicy`.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"format=onnx needs the onnx package: {ONNX_EXTRA} (or pip install onnx onnxruntime)") from exc
    policy = DeterministicPolicy(agent)
    trace(policy)  # refuses an untraceable forward with a clear message, before the exporter's own
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _StrictTracing(), torch.no_grad():
            torch.onnx.export(
                policy, policy.example_args(2), str(path), dynamo=False, opset_version=opset,
                input_names=policy.input_names(), output_names=[OUTPUT_NAME],
                dynamic_axes={**{name: {0: "batch"} for name in policy.input_names()}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ConfigError(f"cannot export network {type(policy.network).__name__} to ONNX (opset {opset}): "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    model = onnx.load(str(path))
    for key, value in metadata(agent, policy).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def default_out(agent: Agent, fmt: str) -> Path:
    """``<run dir>/export/policy<suffix>`` for ``final.pt``; ``policy_<checkpoint stem>`` otherwise."""
    stem = agent.checkpoint.stem
    return agent.run_dir / "export" / (("policy" if stem == "final" else f"policy_{stem}") + FORMATS[fmt])


def check_format(fmt: str) -> str:
    """``fmt`` if it is an allowed format, else :class:`ConfigError` naming the allowed ones."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not allowed: {' or '.join(FORMATS)}")
    return fmt


def export(path: str | Path, format: str, out: Optional[str | Path] = None, checkpoint: str = "final") -> Path:
    """Load a run (``ppo_lab.load(path, checkpoint=checkpoint)``) and write its policy file.

    Args:
        path: a run dir, its ``checkpoints/`` dir or a checkpoint file.
        format: ``onnx`` (:func:`export_onnx`) or ``torchscript`` (:func:`export_torchscript`).
        out: the file to write; default :func:`default_out` (``<run dir>/export/policy.onnx`` /
            ``policy.pt``).
        checkpoint: ``final``, ``best`` or ``latest`` (for a dir).

    Returns:
        The path written.

    Raises:
        ConfigError: a format not allowed, or what cannot be exported (see the module docstring).
        CheckpointError: no such run or checkpoint.
    """
    check_format(format)
    agent = load(path, checkpoint=checkpoint)
    target = Path(out) if out is not None else default_out(agent, format)
    return (export_onnx if format == "onnx" else export_torchscript)(agent, target)


#: The CLI's ``key=value`` options and their defaults (None: required).
OPTIONS = {"format": None, "out": "", "checkpoint": "final"}


def parse_options(items: Sequence[str]) -> dict[str, str]:
    """``["format=onnx", "out=x.onnx"]`` -> ``{"format": "onnx", "out": "x.onnx", "checkpoint": "final"}``.

    Raises:
        ConfigError: an item that is not ``key=value``, an unknown key, or no ``format=``.
    """
    values: dict[str, Any] = dict(OPTIONS)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r} is not key=value; allowed: {', '.join(k + '=' for k in OPTIONS)}")
        if key not in OPTIONS:
            raise ConfigError(f"unknown option {key}=; allowed: {', '.join(k + '=' for k in OPTIONS)}")
        values[key] = value
    if values["format"] is None:
        raise ConfigError(f"format= is required: {' or '.join('format=' + f for f in FORMATS)}")
    check_format(values["format"])
    return values


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m ppo_lab.export <run dir or .pt> format=onnx|torchscript
    [out=<path>] [checkpoint=final|best|latest]``; prints the path written. Bad input (and what
    cannot be exported) is one ``error: ...`` line on stderr and exit status 2."""
    from ppo_lab.commands.cli import main_guard

    parser = argparse.ArgumentParser(
        prog="python -m ppo_lab.export",
        description="Write a trained policy as one file (observation -> deterministic action, "
                    "observation normalization folded in): ONNX or TorchScript.",
    )
    parser.add_argument("path", help="a run dir, its checkpoints/ dir, or a checkpoint .pt file")
    parser.add_argument("options", nargs="*", metavar="key=value",
                        help="format=onnx|torchscript (required), out=<file> (default: <run dir>/export/"
                             "policy.onnx or policy.pt), checkpoint=final|best|latest (default: final)")
    args = parser.parse_args(argv)

    def run() -> Path:
        opts = parse_options(args.options)
        return export(args.path, opts["format"], opts["out"] or None, opts["checkpoint"])

    print(main_guard(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
