"""A trained agent outside the trainer: ``ppo_lab.load(path).predict(obs)``, SB3-style."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from ppo_lab.commands.evaluate import restore_network
from ppo_lab.config import ConfigError, TrainConfig
from ppo_lab.envs import first_action_mask, make_env, mask_width, normalization_from_tensors
from ppo_lab.io.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, run_dir_of
from ppo_lab.io.package import download, is_package, read_package
from ppo_lab.policies.distributions import action_rng
from ppo_lab.training.evaluation import evaluate_policy
from ppo_lab.training.runtime import resolve_device

#: NormalizeObservation's epsilon (gymnasium's default, which training uses).
OBS_EPSILON = 1e-8


class Agent:
    """A trained policy with its run's config and frozen normalization statistics.

    Built by :func:`load`. Attributes: ``cfg`` (the run's :class:`TrainConfig`), ``checkpoint``
    (the file loaded), ``run_dir``, ``global_step`` (env steps it was trained for), ``network``,
    ``masked`` (the run trained with action masks: its ``agent.action_masking`` resolved on the
    run's env, as the trainer did at its first reset).
    """

    def __init__(self, network: torch.nn.Module, cfg: TrainConfig, normalization: dict[str, Any],
                 checkpoint: Path, global_step: int) -> None:
        self.network, self.cfg, self.normalization = network, cfg, normalization
        self.checkpoint, self.run_dir, self.global_step = Path(checkpoint), run_dir_of(Path(checkpoint)), global_step
        self.network.eval()
        probe = make_env(cfg.env)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        try:
            self.masked = first_action_mask(cfg.agent.action_masking, *probe.reset(seed=cfg.seed),
                                            self.action_space, cfg.env.id) is not None
        finally:
            probe.close()
        self._rng = action_rng(cfg.seed)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` as the network saw it in training: the saved running mean/var applied (frozen)
        and clipped to ``env.clip_obs``, exactly as gymnasium's ``NormalizeObservation`` did;
        unchanged when the run did not normalize observations."""
        stats = self.normalization.get("obs")
        if stats is None:
            return obs
        normalized = ((obs - stats["mean"]) / np.sqrt(stats["var"] + OBS_EPSILON)).astype(np.float32)
        return np.clip(normalized, -self.cfg.env.clip_obs, self.cfg.env.clip_obs)

    def predict(
        self,
        obs: Any,
        state: Optional[Any] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = True,
        action_masks: Optional[np.ndarray] = None,
    ) -> tuple[np.ndarray, Optional[Any]]:
        """The action for one observation or a batch (SB3's ``predict`` signature).

        Args:
            obs: one raw observation, ``obs_shape`` (as ``make_env()`` returns it), or a batch
                ``(B, *obs_shape)``; uint8 pixels or floats. The saved normalization is applied.
                Dict observations: a dict ``{key: entry_shape}`` (one) or ``{key: (B, *entry_shape)}``
                (a batch), with every key of ``observation_space``.
            state: recurrent policies (``network=lstm|gru``): the state ``predict`` returned for
                the previous step, float32 ``(B, S)`` (``(S,)`` for a single obs); None starts
                from zeros. Feed-forward policies take None and return None.
            episode_start: ``(B,)`` bool (a bool for a single obs), True where ``obs`` is an
                episode's first observation: the state of those rows is zeroed first (sb3-contrib
                RecurrentPPO's ``episode_start``). None: no episode starts.
            deterministic: the mode (argmax / mean) instead of a sample (drawn from the agent's
                own generator, seeded with the run's seed).
            action_masks: ``(n,)`` / ``(B, n)`` (``sum(nvec)`` for MultiDiscrete) bool or int8,
                1 = valid (``info["action_mask"]``, sb3-contrib MaskablePPO's keyword): masked
                actions are never returned. None: every action is allowed (pass the env's masks
                to a run that trained with them, ``agent.masked``).

        Returns:
            ``(action, state)``: ``action`` int64 ``()`` / ``(B,)`` (Discrete), ``(k,)`` /
            ``(B, k)`` int64 (MultiDiscrete), or float32 ``(d,)`` / ``(B, d)`` clipped to the
            action bounds as in training; ``state`` the new recurrent state (None for
            feed-forward policies).

        Raises:
            ValueError: an observation of the wrong shape, a ``state`` of the wrong shape (or
                any state for a feed-forward policy), or masks of the wrong shape or for actions
                that cannot be masked (Box, MultiBinary).
        """
        size = int(getattr(self.network, "recurrent_state_size", 0))
        if state is not None and not size:
            raise ValueError("state must be None: this policy is feed-forward (it has no recurrent state)")
        if isinstance(self.observation_space, gym.spaces.Dict):
            batch, single = self._dict_batch(obs)
            if action_masks is None and self.masked and "action_mask" in batch:  # PettingZoo's convention
                action_masks = batch["action_mask"]
            size_of_batch = len(next(iter(batch.values())))
        else:
            obs = np.asarray(obs)
            shape = self.observation_space.shape
            single = obs.shape == shape
            if not single and obs.shape[1:] != shape:
                raise ValueError(f"obs has shape {obs.shape}; allowed: {shape} (one) or (B, {', '.join(map(str, shape))}) (a batch)")
            batch = self.normalize(obs[None] if single else obs)
            size_of_batch = len(batch)
        mask = None if action_masks is None else self._masks(action_masks, size_of_batch)
        policy = self.network.inference_policy()
        starts = None if episode_start is None else np.asarray(episode_start, dtype=bool).reshape(size_of_batch)
        if size:
            policy.state = self._recurrent_state(state, size_of_batch, size)
            action, _, _ = policy.act(batch, self._rng, deterministic, mask=mask, episode_start=starts)
        else:
            action, _, _ = policy.act(batch, self._rng, deterministic, mask=mask)
        new_state = None if not size else (policy.state[0] if single else policy.state)
        return self._clip(action[0] if single else action), new_state

    @staticmethod
    def _recurrent_state(state: Optional[Any], batch: int, size: int) -> np.ndarray:
        if state is None:
            return np.zeros((batch, size), dtype=np.float32)
        state = np.asarray(state, dtype=np.float32).reshape(-1, size) if np.ndim(state) == 1 else np.asarray(state, np.float32)
        if state.shape != (batch, size):
            raise ValueError(f"state has shape {state.shape}; allowed: ({batch}, {size}) (the state predict returned)")
        return state.copy()

    def _masks(self, action_masks: Any, batch: int) -> np.ndarray:
        """``action_masks`` as a ``(batch, width)`` bool array, or ValueError naming the shapes."""
        width = mask_width(self.action_space)
        if width is None:
            raise ValueError(f"action_masks apply to Discrete and MultiDiscrete actions; this agent's action "
                             f"space is {self.action_space}")
        mask = np.asarray(action_masks).astype(bool)
        if mask.shape == (width,):
            mask = np.broadcast_to(mask, (batch, width))
        if mask.shape != (batch, width):
            raise ValueError(f"action_masks has shape {np.shape(action_masks)}; allowed: ({width},) or ({batch}, {width})")
        return mask

    def _clip(self, action: np.ndarray) -> np.ndarray:
        """Continuous actions clipped to the action bounds, as in training."""
        if isinstance(self.action_space, gym.spaces.Box):
            return np.clip(action, self.action_space.low, self.action_space.high)
        return action

    def _dict_batch(self, obs: Any) -> tuple[dict[str, np.ndarray], bool]:
        """A Dict observation (one or a batch) as ``{key: (B, *entry_shape)}`` and whether it was one.

        Raises:
            ValueError: not a dict with the space's keys, or entries of the wrong shapes.
        """
        space = self.observation_space
        if not isinstance(obs, dict) or set(obs) != set(space.spaces):
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"obs must be a dict with keys {sorted(space.spaces)} (the Dict observation "
                             f"space {space}); got {got}")
        arrays = {key: np.asarray(value) for key, value in obs.items()}
        single = all(arrays[key].shape == sub.shape for key, sub in space.spaces.items())
        if single:
            return {key: a[None] for key, a in arrays.items()}, True
        sizes = {key: a.shape[0] if a.ndim > 0 else None for key, a in arrays.items()}
        if (len(set(sizes.values())) != 1
                or any(a.shape[1:] != space[key].shape for key, a in arrays.items())):
            shapes = {key: a.shape for key, a in arrays.items()}
            allowed = {key: sub.shape for key, sub in space.spaces.items()}
            raise ValueError(f"obs entries have shapes {shapes}; allowed: {allowed} (one) or each with a "
                             "leading batch dim B, the same for all (a batch)")
        return arrays, False

    def make_env(self, render_mode: Optional[str] = None) -> gym.Env:
        """The run's own env, with its family's and the user's wrappers; its observations are
        raw (``predict`` normalizes them) and its actions are clipped by ``predict``."""
        return make_env(self.cfg.env, render_mode=render_mode)

    def evaluate(self, episodes: int = 10, seed: int = 10_000, deterministic: bool = True) -> dict[str, Any]:
        """Episodes exactly as ``evaluate.py`` runs them for one seed: episode k reset with
        ``seed + k``, normalization frozen, the env's action masks used when the run masked.

        Returns:
            ``{"episodes": [{"seed", "return", "length"}], "mean_return", "std_return"}``.
        """
        results = evaluate_policy(self.network.inference_policy(), self.cfg.env, episodes, seed,
                                  deterministic, self.normalization, action_masking=self.cfg.agent.action_masking)
        returns = np.array([r for r, _ in results])
        return {"episodes": [{"seed": seed + k, "return": r, "length": n} for k, (r, n) in enumerate(results)],
                "mean_return": float(returns.mean()), "std_return": float(returns.std())}


def load(path: str | Path, device: str = "cpu", checkpoint: str = "final") -> Agent:
    """Load a trained agent.

    Args:
        path: a run dir, its ``checkpoints/`` dir, a checkpoint file, a Hub package dir
            (``python -m ppo_lab.hub package``: ``model.safetensors`` + ``config.yaml``), or
            ``hf://<user>/<name>``: a Hub model repo holding such a package, downloaded first
            (``huggingface_hub.snapshot_download``; needs the network).
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA is not exercised on the project's CI).
        checkpoint: for a run dir: ``final`` (``final.pt``, else the newest periodic one),
            ``best`` (``best.pt``) or ``latest`` (the most recently written). A package holds
            one set of weights: ``final`` only.

    Raises:
        CheckpointError: the path or checkpoint does not exist, or is corrupt (or the Hub repo
            holds no package).
        ConfigError: ``checkpoint`` is not one of the names above, or the saved config and
            network do not fit (a checkpoint of another network).
    """
    if checkpoint not in ("final", "best", "latest"):
        raise ConfigError(f"checkpoint={checkpoint!r} is not allowed: final, best or latest")
    if str(path).startswith("hf://"):
        path = download(str(path)[len("hf://"):])
    path = Path(path)
    if is_package(path):
        if checkpoint != "final":
            raise ConfigError(f"checkpoint={checkpoint!r} is not allowed for the Hub package {path}: "
                              "it holds one set of weights (checkpoint=final)")
        state, ckpt = read_package(path)
    else:
        if path.is_dir() and checkpoint == "best":
            ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
            ckpt = ckpt_dir / "best.pt"
            if not ckpt.is_file():
                raise CheckpointError(f"no best.pt in {ckpt_dir}")
        else:
            ckpt = find_checkpoint(path, latest=checkpoint == "latest")
        state = load_checkpoint(ckpt)
    cfg, network = restore_network(state, ckpt, resolve_device(device))
    return Agent(network, cfg, normalization_from_tensors(state["normalization"]), ckpt, int(state["global_step"]))
