"""Typed schema of a ppo_lab run, registered in Hydra's ConfigStore.

Every hyperparameter is documented once, here, with its unit. The YAML files under ``conf/``
only state values; Hydra merges them onto these dataclasses, so an unknown key or a value of
the wrong type is rejected at composition time. :func:`to_typed` converts the composed config to
:class:`TrainConfig` once, at start, and :func:`validate` checks the cross-field rules before any
environment is built (style guide, Hydra "Structured Configs" tutorial).

Names follow CleanRL / SB3 / the PPO paper (``clip_coef``, ``ent_coef``, ``gae_lambda``...).
Documented aliases: ``agent.clip`` for ``agent.clip_coef`` and ``agent.lr`` for
``agent.learning_rate``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A config value that ppo_lab cannot run with. The message names the key and what is allowed."""


class ActionType(enum.Enum):
    """Kind of action space; ``action=discrete`` or ``action=continuous``."""

    discrete = "discrete"
    continuous = "continuous"


class ActionMasking(enum.Enum):
    """Invalid-action masking (``agent.action_masking``): ``auto`` masks when the env provides
    masks (looked for at the first reset), ``on`` requires them (a ConfigError before training
    when the env gives none), ``off`` ignores them. Masks are read from ``info["action_mask"]``
    (gymnasium's Taxi convention) or a Dict observation's ``action_mask`` entry (PettingZoo's);
    ``envs/masks.py``."""

    auto = "auto"
    on = "on"
    off = "off"


class LossType(enum.Enum):
    """Policy objective: ``clip`` (PPO-clip, eq. 7 of Schulman et al. 2017) or ``kl_penalty``
    (adaptive KL penalty, eq. 8 and section 4 of the same paper)."""

    clip = "clip"
    kl_penalty = "kl_penalty"


@dataclass
class EnvConfig:
    """The environment (group ``env``)."""

    #: gymnasium id, e.g. ``CartPole-v1``; any registered id works (``env.id=Acrobot-v1``), and
    #: ``<module>:<EnvId>`` imports ``module`` first (as ``gymnasium.make`` does), for an id a
    #: user's module registers.
    id: str = "CartPole-v1"
    #: The env family (``envs/families.py``): ``classic``, ``box2d``, ``mujoco``, ``atari``,
    #: ``minigrid``, or a user's ``{_target_: <module>.<Family>}``. It adds the family's wrappers (Atari
    #: preprocessing), names the pip extra of its simulator, and says whether the env's state can
    #: be checkpointed exactly (classic control).
    family: Any = "classic"
    #: Gymnasium wrappers applied to every training and evaluation env, in order, after the
    #: family's own wrappers and before the vector-level normalization (README, "Extending"):
    #: each a dotted path (``minigrid.wrappers.ImgObsWrapper``) or ``{_target_: <path>, <kwarg>: ...}``.
    wrappers: list[Any] = field(default_factory=list)
    #: Dict observations: the entries the network reads, e.g. ``[image, direction]`` for
    #: MiniGrid (whose ``mission`` text has no encoder); gymnasium's ``FilterObservation``,
    #: applied after ``wrappers`` (an ``action_mask`` entry is kept too). A ``Tuple`` observation
    #: is a Dict keyed ``"0"``, ``"1"``... here. null: every entry.
    obs_keys: Optional[list[str]] = None
    #: ``sync`` (gymnasium.vector.SyncVectorEnv), ``async`` (subprocesses; slower for cheap envs
    #: on 2 cores) or ``vector_entry_point`` (the env's own batched implementation, e.g. CartPole;
    #: envs without one fall back to ``sync``).
    vectorization: str = "sync"
    #: Running mean/var observation normalization (gymnasium ``NormalizeObservation``); refused
    #: on Dict observations.
    normalize_obs: bool = False
    #: Normalized observations are clipped to [-clip_obs, clip_obs].
    clip_obs: float = 10.0
    #: Reward scaling by the running std of the discounted return (gymnasium ``NormalizeReward``).
    normalize_reward: bool = False
    #: Normalized rewards are clipped to [-clip_reward, clip_reward].
    clip_reward: float = 10.0
    #: Episode cap in env steps; null keeps the registered ``max_episode_steps``.
    max_episode_steps: Optional[int] = None
    #: Extra keyword arguments for ``gymnasium.make``.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Atari preprocessing (family=atari only), as in Mnih et al. 2015 / CleanRL ppo_atari.py.
    #: At most this many random no-ops at reset.
    noop_max: int = 30
    #: Agent steps every ``frame_skip`` frames (max-pooled over the last two).
    frame_skip: int = 4
    #: Side of the square grayscale frame, in pixels.
    screen_size: int = 84
    #: Frames stacked into one observation.
    frame_stack: int = 4
    #: Signal ``terminated`` on life loss (the logged return still covers the whole game).
    episodic_life: bool = True
    #: Clip training rewards to their sign (logged returns are the raw game score).
    clip_reward_sign: bool = True


@dataclass
class AgentConfig:
    """PPO hyperparameters (group ``agent``: presets ``classic``, ``atari``, ``mujoco``)."""

    #: Adam step size; annealed linearly over training when ``anneal_lr`` (CleanRL: the last
    #: update uses learning_rate / num_iterations).
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    #: Adam epsilon (detail 3 of the 37: 1e-5 instead of PyTorch's 1e-8).
    adam_eps: float = 1e-5
    #: Parallel environments in the vector env.
    num_envs: int = 4
    #: Env steps per environment per rollout; batch_size = num_envs * num_steps.
    num_steps: int = 128
    #: Minibatches per epoch; must divide batch_size.
    num_minibatches: int = 4
    #: Passes over each rollout.
    update_epochs: int = 4
    #: Discount factor.
    gamma: float = 0.99
    #: GAE lambda (Schulman et al. 2016).
    gae_lambda: float = 0.95
    #: Normalize advantages per minibatch (mean 0, std 1).
    norm_adv: bool = True
    #: Policy objective.
    loss: LossType = LossType.clip
    #: PPO surrogate clipping range epsilon (> 0). Alias: ``agent.clip``.
    clip_coef: float = 0.2
    #: Anneal clip_coef linearly over training, like the learning rate (the value-clipping range
    #: anneals with it).
    anneal_clip: bool = False
    #: Clip the value update around the old values with clip_coef (CleanRL / OpenAI baselines).
    clip_vloss: bool = True
    #: Entropy bonus coefficient.
    ent_coef: float = 0.01
    #: Value loss coefficient.
    vf_coef: float = 0.5
    #: Global L2 norm bound of the gradient.
    max_grad_norm: float = 0.5
    #: Stop the epochs of an update early once approx_kl exceeds this; null disables.
    target_kl: Optional[float] = None
    #: KL penalty target d_targ (loss=kl_penalty only).
    kl_target: float = 0.01
    #: Initial KL penalty coefficient beta (loss=kl_penalty only).
    kl_beta: float = 1.0
    #: Invalid-action masking: ``auto`` (mask when the env provides masks), ``on`` (require them)
    #: or ``off``. A mask is int8/bool ``(n,)`` (``(sum(nvec),)`` for MultiDiscrete), 1 = valid;
    #: masked actions get logit -1e8, so they are never sampled and log-probs and entropies are
    #: over the valid actions (sb3-contrib MaskablePPO). Discrete / MultiDiscrete actions only.
    action_masking: ActionMasking = ActionMasking.auto
    #: Alias of ``clip_coef`` (``agent.clip=0.1``); copied into clip_coef at start.
    clip: Optional[float] = None
    #: Alias of ``learning_rate`` (``agent.lr=1e-3``); copied into learning_rate at start.
    lr: Optional[float] = None

    @property
    def batch_size(self) -> int:
        """Env steps per rollout, over all envs."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        """Samples per gradient step (before dropping autoreset steps)."""
        return self.batch_size // self.num_minibatches


#: The project's actor-critic; ``network._target_`` naming anything else is a user's network.
BUILTIN_NETWORK = "ppo_lab.policies.ActorCritic"


@dataclass
class NetworkConfig:
    """The project's actor-critic (group ``network``: mlp_shared, mlp_separate, cnn_shared,
    cnn_separate, lstm, gru, cnn_lstm). A user's network replaces the whole node: ``network._target_=<module>.<Class>``
    and its own kwargs (protocol: ``ppo_lab/policies/protocol.py``)."""

    _target_: str = BUILTIN_NETWORK
    #: ``mlp`` for vector observations, ``cnn`` (Nature CNN) for image observations.
    kind: str = "mlp"
    #: One trunk with policy and value heads (true) or separate actor and critic (false).
    shared: bool = False
    #: Hidden layer widths of the MLP (for ``cnn``: the width of the layer after the convolutions).
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    #: ``tanh`` or ``relu``.
    activation: str = "tanh"
    #: Recurrent core between the trunk and the heads: ``none``, ``lstm`` or ``gru`` (group
    #: ``network``: lstm, gru; ``policies/recurrent.py``). Shared or separate follows ``shared``.
    core: str = "none"
    #: Hidden width of the recurrent core (LSTM: the state holds h and c, ``2 * core_size`` floats).
    core_size: int = 128


@dataclass
class ActionConfig:
    """Action distribution (group ``action``: discrete, continuous)."""

    type: ActionType = ActionType.discrete
    #: Initial state-independent log standard deviation (continuous only).
    log_std_init: float = 0.0


@dataclass
class TrainConfig:
    """One training run (``conf/train.yaml``)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    #: The actor-critic: the project's (:class:`NetworkConfig`) or a user's ``_target_`` node.
    network: Any = field(default_factory=lambda: {"_target_": BUILTIN_NETWORK, "kind": "mlp", "shared": False,
                                                  "hidden_sizes": [64, 64], "activation": "tanh"})
    action: ActionConfig = field(default_factory=ActionConfig)
    #: Metric sinks, one ``_target_`` node per key (group ``logger``, multi-select:
    #: ``logger=[wandb,tensorboard]``; ``logger=none`` for none). ``<run dir>/metrics.jsonl`` is
    #: always written. Protocol: ``ppo_lab/io/sinks.py``.
    logger: dict[str, Any] = field(default_factory=dict)
    #: Callbacks, one ``_target_`` node per key (group ``callbacks``, multi-select:
    #: ``callbacks=[stop_on_reward,eval_video]``). Protocol: ``ppo_lab/training/callbacks.py``.
    callbacks: dict[str, Any] = field(default_factory=dict)
    #: Seed of python, numpy, torch and the envs (env i gets seed + i).
    seed: int = 1
    #: Training budget in env steps (summed over envs).
    total_timesteps: int = 100_000
    #: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
    device: str = "auto"
    #: torch intra-op threads. null (default): 1 for MLP networks, whose per-op overhead dominates
    #: (more threads only add synchronization), and every CPU core this process may use for CNNs
    #: (Breakout on 2 cores: 1.5x faster than 1 thread). A number overrides both. numpy's BLAS
    #: (the numpy rollout policy, a population's update) is held to the same count.
    torch_threads: Optional[int] = None
    #: Deterministic cuDNN kernels.
    torch_deterministic: bool = True
    #: ``torch.compile`` the network's forward pass, which the update epochs use (MLP rollouts act
    #: through a fused numpy snapshot, ``ActorCritic.inference_policy``; CNN rollouts through the
    #: compiled network). Pays off on long and GPU runs; on CPU the compilation (~10 s or more)
    #: outweighs the gain for short runs of small networks.
    compile: bool = False
    #: Save a checkpoint every this many updates (and always at the end).
    checkpoint_interval: int = 50
    #: Periodic checkpoints kept on disk (the final and best ones are kept too).
    keep_last: int = 3
    #: Evaluate every this many updates (0: only at the end).
    eval_interval: int = 0
    #: Episodes per evaluation.
    eval_episodes: int = 10
    #: Seed of the evaluation env (episode k uses eval_seed + k).
    eval_seed: int = 10_000
    #: Evaluate with the mode / mean action (true) or by sampling (false).
    eval_deterministic: bool = True
    #: Show a progress bar on stderr.
    progress: bool = True
    #: Run name; null: derived from env id, seed and time.
    run_name: Optional[str] = None
    #: Run dir of an earlier run to continue (see README, "Resume").
    resume: Optional[str] = None


@dataclass
class EvalLoggerConfig:
    """Where ``evaluate.py`` logs: ``wandb`` (into the training run's group, job_type=eval) or ``none``."""

    kind: str = "wandb"
    #: null: the training run's own W&B project / entity (from its saved config).
    project: Optional[str] = None
    entity: Optional[str] = None
    mode: Optional[str] = None


@dataclass
class EvaluateConfig:
    """``python evaluate.py checkpoint=<run dir or .pt file>`` (``conf/evaluate.yaml``)."""

    #: A run dir (uses checkpoints/final.pt, else the newest update_*.pt) or a checkpoint file.
    checkpoint: str = "???"
    #: Episodes per seed.
    eval_episodes: int = 10
    #: Base seeds; for each seed s, episode k is reset with seed s + k.
    eval_seeds: list[int] = field(default_factory=lambda: [10_000])
    #: Mode / mean action (true) or sampled actions (false).
    deterministic: bool = True
    #: Record videos of the first episode of each seed with gymnasium's RecordVideo.
    video: bool = False
    device: str = "auto"
    logger: EvalLoggerConfig = field(default_factory=EvalLoggerConfig)


def register_configs() -> None:
    """Register :class:`TrainConfig` and its group schemas in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
