"""Reading numbers from the environment, with errors that name the variable."""

from __future__ import annotations

from collections.abc import Mapping

from models import errors


def _positive(env: Mapping[str, str], name: str, default: float, parse: type[float]) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = 0
    if value <= 0:
        kind = "integer" if parse is int else "number"
        raise errors.ConfigError(f"{name} must be a positive {kind}, got {raw!r}")
    return value


def positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    """Return ``env[name]`` as a positive int (``default`` when unset); ConfigError otherwise."""
    return int(_positive(env, name, default, int))


def positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    """Return ``env[name]`` as a positive float (``default`` when unset); ConfigError otherwise."""
    return _positive(env, name, default, float)
