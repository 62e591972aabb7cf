"""``_target_`` nodes: import, check and instantiate what a user plugs in by config.

Everything that varies (env families, wrappers, networks, logger sinks, callbacks) is a node
``{_target_: <module>.<Name>, <kwarg>: <value>, ...}`` instantiated by Hydra. The checks here run
before training: the target imports, and every kwarg is a parameter of it (with a "did you
mean" for a near miss), so a typo fails fast with the key and what is allowed.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Iterable

from hydra.utils import instantiate

from ppo_lab.config.schema import ConfigError


def import_target(key: str, path: str) -> Any:
    """The object named by a dotted ``path`` (``pkg.module.Name``).

    Raises:
        ConfigError: the path has no module part, its module fails to import, or the module has
            no such name (naming ``key`` and the error).
    """
    module_name, _, attr = str(path).rpartition(".")
    if not module_name:
        raise ConfigError(f"{key}={path!r} is not allowed: a dotted path <module>.<Name>")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"{key}={path!r}: importing module {module_name!r} failed ({type(exc).__name__}: {exc}); "
            "allowed: a module on sys.path (PYTHONPATH)"
        ) from None
    if not hasattr(module, attr):
        raise ConfigError(f"{key}={path!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """``" (did you mean clip_coef?)"`` for a close match among ``allowed``, else ``""``."""
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def check_node(key: str, node: dict[str, Any], runtime: Iterable[str] = (), positional: int = 0) -> Any:
    """Check a ``_target_`` node before training: the target imports, and each config key is a
    parameter of its constructor (unless it takes ``**kwargs``). ``runtime`` names parameters
    that ppo_lab passes itself (e.g. ``observation_space``), and the first ``positional``
    parameters are passed by position (a wrapper's ``env``); neither may be set in the config.

    Returns:
        The imported target.

    Raises:
        ConfigError: naming ``key``, the bad kwarg and the allowed ones.
    """
    if "_target_" not in node:
        raise ConfigError(f"{key}={node!r} has no _target_; allowed: a dict with _target_: <module>.<Name>")
    target = import_target(f"{key}._target_", node["_target_"])
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return target  # builtins without a signature: Hydra reports a bad call itself
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return target
    runtime = set(runtime) | set(list(params)[:positional])
    allowed = [n for n, p in params.items()
               if n not in runtime and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name in node:
        if name.startswith("_"):
            continue
        if name in runtime:
            raise ConfigError(f"{key}.{name} is set by ppo_lab at run time; remove it from the config")
        if name not in allowed:
            raise ConfigError(
                f"unknown key {key}.{name} for {node['_target_']}{did_you_mean(name, allowed)}; "
                f"allowed keys: {', '.join(allowed) or '(none)'}"
            )
    return target


def instantiate_node(key: str, node: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Hydra-instantiate ``node`` with run-time ``args`` / ``kwargs`` (checked first, as
    :func:`check_node`).

    Raises:
        ConfigError: as :func:`check_node`, or the constructor raises a ``TypeError`` (a missing
            argument, say), naming ``key``.
    """
    check_node(key, node, runtime=kwargs.keys(), positional=len(args))
    try:
        # A partial of the node alone, then called: the run-time objects (spaces, a context
        # holding the run's config with its own _target_ nodes) are passed as they are, never
        # converted or instantiated by Hydra.
        factory = instantiate(node, _partial_=True, _convert_="all")
        return factory(*args, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{key}: building {node['_target_']} failed ({type(cause).__name__}: {cause})") from None
