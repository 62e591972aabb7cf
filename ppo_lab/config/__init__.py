"""The run's typed config: the schema (dataclasses in Hydra's ConfigStore), its validation and
aliases, and the checks of ``_target_`` nodes (what a user plugs in)."""

from ppo_lab.config.schema import (
    BUILTIN_NETWORK,
    ActionConfig,
    ActionMasking,
    ActionType,
    AgentConfig,
    ConfigError,
    EnvConfig,
    EvalLoggerConfig,
    EvaluateConfig,
    LossType,
    NetworkConfig,
    TrainConfig,
    register_configs,
)
from ppo_lab.config.validation import (
    ALIASES,
    apply_aliases,
    check_config_keys,
    check_override_keys,
    is_builtin_network,
    migrate,
    rewrite_alias_args,
    to_typed,
    validate,
    validate_evaluate,
)

__all__ = [
    "ALIASES", "BUILTIN_NETWORK", "ActionConfig", "ActionMasking", "ActionType", "AgentConfig", "ConfigError",
    "EnvConfig", "EvalLoggerConfig", "EvaluateConfig", "LossType", "NetworkConfig", "TrainConfig",
    "apply_aliases", "check_config_keys", "check_override_keys",
    "is_builtin_network", "migrate", "register_configs", "rewrite_alias_args", "to_typed",
    "validate", "validate_evaluate",
]
