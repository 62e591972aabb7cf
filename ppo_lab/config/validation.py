"""Validation of a composed config, before anything is built: aliases, unknown keys, value
ranges and cross-field rules, each error naming the key, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ppo_lab.config.schema import (
    BUILTIN_NETWORK,
    AgentConfig,
    ConfigError,
    EvaluateConfig,
    LossType,
    NetworkConfig,
    TrainConfig,
)
from ppo_lab.config.targets import check_node, did_you_mean, import_target


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


#: Documented aliases: the user's word -> the standard name (CleanRL / SB3).
ALIASES = {"agent.clip": "agent.clip_coef", "agent.lr": "agent.learning_rate"}


def rewrite_alias_args(args: list[str]) -> list[str]:
    """Command-line overrides with the documented aliases spelled as their standard keys
    (``agent.clip=0.1`` -> ``agent.clip_coef=0.1``), so that every view of the composed config
    (``--cfg job``, ``.hydra/config.yaml``, W&B) shows the value the run uses."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        prefix = key[: len(key) - len(key.lstrip("+"))]
        if eq and key.lstrip("+") in ALIASES:
            arg = f"{prefix}{ALIASES[key.lstrip('+')]}={value}"
        out.append(arg)
    return out


def _schema_fields(node_type: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(node_type)}


def _child_type(f: dataclasses.Field) -> Any:
    """The dataclass type of a field, if it is a nested schema node."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
        return type(default) if dataclasses.is_dataclass(default) else None
    return None


def _leaf_paths(schema: type, prefix: str = "") -> dict[str, list[str]]:
    """``{leaf name: [full key, ...]}`` of every key in the schema (for "did you mean")."""
    out: dict[str, list[str]] = {}
    for name, f in _schema_fields(schema).items():
        if name.startswith("_"):
            continue
        key = f"{prefix}{name}"
        out.setdefault(name, []).append(key)
        child = _child_type(f)
        if child is not None:
            for leaf, keys in _leaf_paths(child, key + ".").items():
                out.setdefault(leaf, []).extend(keys)
    return out


def unknown_key_error(path: list[str], schema: type, root: type, arg: str = "") -> ConfigError:
    """The error for ``path`` (its last part not a field of ``schema``): allowed keys and a
    "did you mean" (a close name here, or the same name under another node)."""
    fields = [k for k in _schema_fields(schema) if not k.startswith("_")]
    name, where = path[-1], ".".join(path[:-1]) or "the top level"
    elsewhere = [k for k in _leaf_paths(root).get(name, []) if k != ".".join(path)]
    hint = f" (did you mean {elsewhere[0]}?)" if elsewhere else did_you_mean(name, fields)
    given = f" in {arg!r}" if arg else ""
    return ConfigError(f"unknown key {'.'.join(path)}{given}{hint}; allowed keys of {where}: {', '.join(sorted(fields))}")


def check_override_keys(args: list[str], schema: type = None) -> None:  # type: ignore[assignment]
    """Reject command-line overrides (also ``+key=value``) whose key the schema does not have,
    listing the allowed keys, before Hydra composes anything. Group choices
    (``env=lunarlander``), ``hydra.*`` keys, deletions and flags are left to Hydra; keys inside
    dict fields (``env.kwargs.*``) and ``_target_`` nodes (``network``, ``logger``, ``callbacks``)
    are checked against their target later (``config/targets.py``).

    Raises:
        ConfigError: e.g. ``unknown key agent.clip_cof (did you mean clip_coef?); allowed keys of agent: ...``.
    """
    schema = schema or TrainConfig
    for arg in args:
        if arg.startswith(("-", "~", "hydra.", "hydra/", "+hydra")) or "=" not in arg:
            continue
        path = arg.split("=", 1)[0].lstrip("+").split(".")
        if len(path) < 2 and not arg.startswith("+"):
            continue  # a group choice or a top-level key: Hydra lists the options
        node: Any = schema
        for depth, name in enumerate(path):
            if node is None or not dataclasses.is_dataclass(node):
                break  # inside a dict/Any field such as env.kwargs or network
            fields = _schema_fields(node)
            if name not in fields:
                raise unknown_key_error(path[: depth + 1], node, schema, arg)
            node = _child_type(fields[name])


def check_config_keys(cfg: Any, schema: type = TrainConfig, path: tuple[str, ...] = ()) -> None:
    """Reject keys of the composed config that the schema does not have (a typo in a YAML file,
    ``+agent.foo=1``), recursively through the schema's nested nodes.

    Raises:
        ConfigError: as :func:`unknown_key_error`.
    """
    fields = _schema_fields(schema)
    for name in cfg:
        if name not in fields:
            raise unknown_key_error([*path, str(name)], schema, TrainConfig if schema is not EvaluateConfig else schema)
        child = _child_type(fields[name])
        value = cfg[name]
        if child is not None and isinstance(value, (dict, DictConfig)):
            check_config_keys(value, child, (*path, str(name)))


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def apply_aliases(cfg: DictConfig) -> None:
    """Copy the documented aliases (``agent.clip``, ``agent.lr``) into their fields, in place
    (for aliases written in YAML files; the command line's are rewritten by
    :func:`rewrite_alias_args`)."""
    for alias, name in (("clip", "clip_coef"), ("lr", "learning_rate")):
        value = cfg.agent.get(alias)
        if value is not None:
            cfg.agent[name] = value
            cfg.agent[alias] = None


#: Network targets of earlier versions, read from saved configs.
_OLD_NETWORK_TARGETS = {"ppo_lab.networks.ActorCritic"}


def migrate(cfg: DictConfig) -> DictConfig:
    """A saved config of an earlier ppo_lab in today's layout (for resume and evaluate):
    ``logger: {kind, project, ..., tensorboard}`` becomes the sink dict, the ``trainer`` node
    goes, and the network's old target path is renamed."""
    cfg = cfg.copy()
    with open_dict(cfg):
        logger = cfg.get("logger")
        if isinstance(logger, DictConfig) and "kind" in logger:
            sinks: dict[str, Any] = {}
            if logger.get("kind") == "wandb":
                sinks["wandb"] = {"_target_": "ppo_lab.io.sinks.WandbSink",
                                  **{k: logger.get(k) for k in ("project", "entity", "mode", "group", "tags") if k in logger}}
            if logger.get("tensorboard"):
                sinks["tensorboard"] = {"_target_": "ppo_lab.io.sinks.TensorBoardSink"}
            cfg.logger = sinks
        cfg.pop("trainer", None)
        network = cfg.get("network")
        if isinstance(network, DictConfig) and network.get("_target_") in _OLD_NETWORK_TARGETS:
            network["_target_"] = BUILTIN_NETWORK
        if isinstance(cfg.get("env"), DictConfig) and hasattr(cfg.env.get("family"), "value"):
            cfg.env.family = cfg.env.family.value
    return cfg


#: The project network's layout keys, which the ``network`` group's default puts in every node.
LAYOUT_KEYS = tuple(f.name for f in dataclasses.fields(NetworkConfig) if f.name != "_target_")


def user_network_node(node: dict[str, Any]) -> dict[str, Any]:
    """A user's network node, without the layout keys (``kind``, ``shared``, ``hidden_sizes``,
    ``activation``) that its constructor does not take: they come from the ``network`` group's
    default, not from the user, so ``network._target_=<module>.<Class>`` alone works. A layout
    key the constructor does take (e.g. ``hidden_sizes``) is passed on.

    Raises:
        ConfigError: the target cannot be imported.
    """
    target = import_target("network._target_", node["_target_"])
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return dict(node)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in node.items() if k not in LAYOUT_KEYS or k in params or takes_any}


def is_builtin_network(node: Any) -> bool:
    """Whether a network node is the project's :class:`ActorCritic` (a NetworkConfig)."""
    return isinstance(node, NetworkConfig) or (
        isinstance(node, (dict, DictConfig)) and node.get("_target_", BUILTIN_NETWORK) == BUILTIN_NETWORK)


def to_typed(cfg: DictConfig) -> TrainConfig:
    """Resolve aliases and convert the composed config to a validated :class:`TrainConfig`.

    The project's network node becomes a :class:`NetworkConfig`; a user's stays a dict.

    Raises:
        ConfigError: an unknown key, a value that does not fit the schema, or a rule of
            :func:`validate`.
    """
    cfg = migrate(cfg)
    apply_aliases(cfg)
    check_config_keys(cfg)
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg))
        if is_builtin_network(typed.network):
            network = OmegaConf.merge(OmegaConf.structured(NetworkConfig), typed.network)
            typed.network = OmegaConf.to_object(network)
    except ConfigError:
        raise
    except Exception as exc:  # omegaconf's ValidationError etc.: keep its message, drop the trace
        raise ConfigError(str(exc)) from None
    validate(typed)
    return typed


#: What ppo_lab passes to every network's constructor (``policies/protocol.py``).
NETWORK_RUNTIME_ARGS = ("observation_space", "action_space", "action_type", "log_std_init")


def validate(cfg: TrainConfig) -> None:
    """Check the cross-field rules that the schema's types cannot express.

    Raises:
        ConfigError: naming the key, its value and what is allowed.
    """
    a = cfg.agent
    # nan passes every comparison below (and inf some): refuse both first, naming the key.
    for f in dataclasses.fields(AgentConfig):
        value = getattr(a, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(f"agent.{f.name}", value, "a finite number")
    for key, value in (("action.log_std_init", cfg.action.log_std_init), ("env.clip_obs", cfg.env.clip_obs),
                       ("env.clip_reward", cfg.env.clip_reward)):
        if not math.isfinite(value):
            _fail(key, value, "a finite number")
    if cfg.env.max_episode_steps is not None and cfg.env.max_episode_steps < 1:
        _fail("env.max_episode_steps", cfg.env.max_episode_steps,
              "a positive number of env steps, or null for the id's registered limit")
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
    if isinstance(cfg.network, NetworkConfig):
        if cfg.network.kind not in ("mlp", "cnn"):
            _fail("network.kind", cfg.network.kind, "one of mlp, cnn")
        if cfg.network.activation not in ("tanh", "relu"):
            _fail("network.activation", cfg.network.activation, "one of tanh, relu")
        if not cfg.network.hidden_sizes or min(cfg.network.hidden_sizes) < 1:
            _fail("network.hidden_sizes", cfg.network.hidden_sizes, "a non-empty list of positive widths")
        if cfg.network.core not in ("none", "lstm", "gru"):
            _fail("network.core", cfg.network.core, "one of none, lstm, gru")
        if cfg.network.core != "none":
            if cfg.network.core_size < 1:
                _fail("network.core_size", cfg.network.core_size, "a positive width")
            if a.num_minibatches > a.num_envs:
                raise ConfigError(
                    f"agent.num_minibatches={a.num_minibatches} exceeds agent.num_envs={a.num_envs}: a recurrent "
                    f"policy (network.core={cfg.network.core}) splits minibatches by env (whole sequences); "
                    f"allowed: num_minibatches <= {a.num_envs}"
                )
    else:
        check_node("network", user_network_node(cfg.network), runtime=NETWORK_RUNTIME_ARGS)
    wandb = cfg.logger.get("wandb")
    if isinstance(wandb, dict) and wandb.get("mode") not in (None, "online", "offline", "disabled"):
        _fail("logger.wandb.mode", wandb.get("mode"), "one of online, offline, disabled, or null")
    for group, runtime in (("logger", ("context",)), ("callbacks", ())):
        for name, node in getattr(cfg, group).items():
            if not isinstance(node, dict):
                _fail(f"{group}.{name}", node, "a dict with _target_: <module>.<Name> (and its kwargs)")
            check_node(f"{group}.{name}", node, runtime=runtime)
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
