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
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that ppo_lab cannot run with. The message names the key and what is allowed."""


class ActionType(enum.Enum):
    """Kind of action space; ``action=discrete`` or ``action=continuous``."""

    discrete = "discrete"
    continuous = "continuous"


class EnvFamily(enum.Enum):
    """Environment family; selects the wrappers (``atari``: frame preprocessing; ``mujoco``:
    observation/reward normalization as set in the env config)."""

    classic = "classic"
    box2d = "box2d"
    mujoco = "mujoco"
    atari = "atari"


class LossType(enum.Enum):
    """Policy objective: ``clip`` (PPO-clip, eq. 7 of Schulman et al. 2017) or ``kl_penalty``
    (adaptive KL penalty, eq. 8 and section 4 of the same paper)."""

    clip = "clip"
    kl_penalty = "kl_penalty"


@dataclass
class EnvConfig:
    """The environment (group ``env``)."""

    #: gymnasium id, e.g. ``CartPole-v1``; any registered id works (``env.id=Acrobot-v1``).
    id: str = "CartPole-v1"
    family: EnvFamily = EnvFamily.classic
    #: ``sync`` (gymnasium.vector.SyncVectorEnv), ``async`` (subprocesses; slower for cheap envs
    #: on 2 cores) or ``vector_entry_point`` (the env's own batched implementation, e.g. CartPole;
    #: envs without one fall back to ``sync``).
    vectorization: str = "sync"
    #: Running mean/var observation normalization (gymnasium ``NormalizeObservation``).
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


@dataclass
class NetworkConfig:
    """Actor-critic network (group ``network``: mlp_shared, mlp_separate, cnn_shared, cnn_separate)."""

    _target_: str = "ppo_lab.networks.ActorCritic"
    #: ``mlp`` for vector observations, ``cnn`` (Nature CNN) for image observations.
    kind: str = "mlp"
    #: One trunk with policy and value heads (true) or separate actor and critic (false).
    shared: bool = False
    #: Hidden layer widths of the MLP (for ``cnn``: the width of the layer after the convolutions).
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    #: ``tanh`` or ``relu``.
    activation: str = "tanh"


@dataclass
class ActionConfig:
    """Action distribution (group ``action``: discrete, continuous)."""

    type: ActionType = ActionType.discrete
    #: Initial state-independent log standard deviation (continuous only).
    log_std_init: float = 0.0


@dataclass
class LoggerConfig:
    """Metric sink (group ``logger``: wandb, none)."""

    #: ``wandb`` or ``none`` (local metrics.jsonl is always written).
    kind: str = "wandb"
    project: str = "ppo_lab"
    entity: Optional[str] = None
    #: ``online``, ``offline`` or ``disabled``; null: $WANDB_MODE if set, else online when an API
    #: key is configured, else offline.
    mode: Optional[str] = None
    #: W&B group; null: the sweep dir for multiruns, else the run name.
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    #: Also write TensorBoard event files to ``<run dir>/tensorboard`` (any ``kind``; needs the
    #: ``tensorboard`` package, in the ``sweep`` extra).
    tensorboard: bool = False


@dataclass
class TrainerConfig:
    """What Hydra instantiates into the training loop."""

    _target_: str = "ppo_lab.trainer.Trainer"


@dataclass
class TrainConfig:
    """One training run (``conf/train.yaml``)."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    #: Seed of python, numpy, torch and the envs (env i gets seed + i).
    seed: int = 1
    #: Training budget in env steps (summed over envs).
    total_timesteps: int = 100_000
    #: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
    device: str = "auto"
    #: torch intra-op threads. null (default): 1 for MLP networks, whose per-op overhead dominates
    #: (more threads only add synchronization), and every CPU core this process may use for CNNs
    #: (Breakout on 2 cores: 1.5x faster than 1 thread). A number overrides both.
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


def validate_evaluate(cfg: EvaluateConfig) -> None:
    """Check ``evaluate.py``'s config before anything runs.

    Raises:
        ConfigError: ``eval_episodes`` < 1, no seeds, or seed ranges that overlap (seed s runs
            episodes s .. s + eval_episodes - 1, so overlapping ranges would repeat episodes).
    """
    if cfg.eval_episodes < 1:
        _fail("eval_episodes", cfg.eval_episodes, "must be a positive integer")
    seeds = sorted(cfg.eval_seeds)
    if not seeds:
        _fail("eval_seeds", cfg.eval_seeds, "a non-empty list of seeds")
    for low, high in zip(seeds, seeds[1:]):
        if high - low < cfg.eval_episodes:
            raise ConfigError(
                f"eval_seeds={list(cfg.eval_seeds)} overlap: seed s runs episodes seeded s .. "
                f"s + {cfg.eval_episodes - 1} (eval_episodes={cfg.eval_episodes}), so {low} and {high} "
                f"would repeat episodes; allowed: seeds at least {cfg.eval_episodes} apart, "
                f"e.g. [{low}, {low + cfg.eval_episodes}]"
            )


def register_configs() -> None:
    """Register :class:`TrainConfig` and its group schemas in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(group="env", name="schema", node=EnvConfig)
    cs.store(group="agent", name="schema", node=AgentConfig)
    cs.store(group="network", name="schema", node=NetworkConfig)
    cs.store(group="action", name="schema", node=ActionConfig)
    cs.store(group="logger", name="schema", node=LoggerConfig)


def check_override_keys(args: list[str], schema: type = None) -> None:  # type: ignore[assignment]
    """Reject command-line overrides whose key the schema does not have, listing the allowed keys.

    Hydra rejects them too, but without naming what is allowed; this runs first. Group choices
    (``env=lunarlander``), ``hydra.*`` keys, ``+``/``~`` edits and flags are left to Hydra.

    Raises:
        ConfigError: e.g. ``unknown key agent.foo; allowed keys of agent: learning_rate, ...``.
    """
    import dataclasses

    schema = schema or TrainConfig
    for arg in args:
        if arg.startswith(("-", "+", "~", "hydra.", "hydra/")) or "=" not in arg:
            continue
        path = arg.split("=", 1)[0].split(".")
        if len(path) < 2:
            continue  # a group choice or a top-level key: Hydra lists the options
        node: Any = schema
        for depth, name in enumerate(path):
            if not dataclasses.is_dataclass(node):
                break  # inside a dict/list field such as env.kwargs
            fields = {f.name: f for f in dataclasses.fields(node)}
            if name not in fields:
                where = ".".join(path[:depth]) or "the top level"
                allowed = ", ".join(sorted(k for k in fields if not k.startswith("_")))
                raise ConfigError(f"unknown key {'.'.join(path[:depth + 1])} in {arg!r}; allowed keys of {where}: {allowed}")
            default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            node = type(default) if dataclasses.is_dataclass(default) else None


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def apply_aliases(cfg: DictConfig) -> None:
    """Copy the documented aliases (``agent.clip``, ``agent.lr``) into their fields, in place."""
    for alias, name in (("clip", "clip_coef"), ("lr", "learning_rate")):
        value = cfg.agent.get(alias)
        if value is not None:
            cfg.agent[name] = value
            cfg.agent[alias] = None


def to_typed(cfg: DictConfig) -> TrainConfig:
    """Resolve aliases and convert the composed config to a validated :class:`TrainConfig`.

    Raises:
        ConfigError: a value violates a rule of :func:`validate`, or does not fit the schema.
    """
    cfg = cfg.copy()
    apply_aliases(cfg)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg))
    except Exception as exc:  # omegaconf's ValidationError etc.: keep its message, drop the trace
        raise ConfigError(str(exc)) from None
    validate(typed)
    return typed


def validate(cfg: TrainConfig) -> None:
    """Check the cross-field rules that the schema's types cannot express.

    Raises:
        ConfigError: naming the key, its value and what is allowed.
    """
    a = cfg.agent
    positive_ints = {
        "agent.num_envs": a.num_envs,
        "agent.num_steps": a.num_steps,
        "agent.num_minibatches": a.num_minibatches,
        "agent.update_epochs": a.update_epochs,
        "total_timesteps": cfg.total_timesteps,
        "checkpoint_interval": cfg.checkpoint_interval,
        "eval_episodes": cfg.eval_episodes,
        "torch_threads": 1 if cfg.torch_threads is None else cfg.torch_threads,
    }
    for key, value in positive_ints.items():
        if value < 1:
            _fail(key, value, "must be a positive integer")
    if a.clip_coef <= 0:
        _fail("agent.clip_coef", a.clip_coef, "must be > 0 (typical: 0.1 to 0.3)")
    if a.learning_rate <= 0:
        _fail("agent.learning_rate", a.learning_rate, "must be > 0")
    if not 0.0 <= a.gamma <= 1.0:
        _fail("agent.gamma", a.gamma, "must be in [0, 1]")
    if not 0.0 <= a.gae_lambda <= 1.0:
        _fail("agent.gae_lambda", a.gae_lambda, "must be in [0, 1]")
    for key, value in (("agent.ent_coef", a.ent_coef), ("agent.vf_coef", a.vf_coef)):
        if value < 0:
            _fail(key, value, "must be >= 0")
    if a.max_grad_norm <= 0:
        _fail("agent.max_grad_norm", a.max_grad_norm, "must be > 0")
    if a.target_kl is not None and a.target_kl <= 0:
        _fail("agent.target_kl", a.target_kl, "must be > 0, or null to disable")
    if a.loss is LossType.kl_penalty and (a.kl_target <= 0 or a.kl_beta <= 0):
        _fail("agent.kl_target/agent.kl_beta", (a.kl_target, a.kl_beta), "both must be > 0")
    if a.batch_size % a.num_minibatches != 0:
        raise ConfigError(
            f"agent.num_minibatches={a.num_minibatches} does not divide batch_size={a.batch_size} "
            f"(agent.num_envs={a.num_envs} x agent.num_steps={a.num_steps}); "
            f"allowed: a divisor of {a.batch_size}"
        )
    if cfg.total_timesteps < a.batch_size:
        raise ConfigError(
            f"total_timesteps={cfg.total_timesteps} is smaller than one rollout, batch_size="
            f"{a.batch_size} (agent.num_envs={a.num_envs} x agent.num_steps={a.num_steps}); "
            f"allowed: total_timesteps >= {a.batch_size}"
        )
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        _fail("device", cfg.device, "one of auto, cpu, cuda, cuda:N")
    if cfg.env.vectorization not in ("sync", "async", "vector_entry_point"):
        _fail("env.vectorization", cfg.env.vectorization, "one of sync, async, vector_entry_point")
    if cfg.network.kind not in ("mlp", "cnn"):
        _fail("network.kind", cfg.network.kind, "one of mlp, cnn")
    if cfg.network.activation not in ("tanh", "relu"):
        _fail("network.activation", cfg.network.activation, "one of tanh, relu")
    if not cfg.network.hidden_sizes or min(cfg.network.hidden_sizes) < 1:
        _fail("network.hidden_sizes", cfg.network.hidden_sizes, "a non-empty list of positive widths")
    if cfg.logger.kind not in ("wandb", "none"):
        _fail("logger.kind", cfg.logger.kind, "one of wandb, none (choose with logger=wandb|none)")
    if cfg.logger.mode not in (None, "online", "offline", "disabled"):
        _fail("logger.mode", cfg.logger.mode, "one of online, offline, disabled, or null")
    if not -20.0 < cfg.action.log_std_init < 2.0:
        _fail("action.log_std_init", cfg.action.log_std_init,
              "must lie inside the log std clamp (-20, 2): outside it the clamp has no gradient")
    if a.num_steps < 2:
        _fail("agent.num_steps", a.num_steps, "must be >= 2 (a rollout right after an episode end "
              "would otherwise hold only the autoreset step, with nothing to train on)")
    if cfg.keep_last < 1:
        _fail("keep_last", cfg.keep_last, "must be >= 1")
    if cfg.eval_interval < 0:
        _fail("eval_interval", cfg.eval_interval, "must be >= 0 (0: evaluate only at the end)")
