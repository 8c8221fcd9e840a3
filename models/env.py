"""Reading settings from the environment: one parser per kind of value, one way to refuse.

Every setting of the project is read through these functions, so a bad value is refused
alike wherever it is read: a ConfigError of one line that names the variable, says what it
accepts and quotes (the start of) what it got. URLs are never quoted back, since they may
hold a password; only their scheme is. An unset or empty variable means the default.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection, Mapping

from models import errors

# Digits only: no sign, no exponent, no underscores, no surrounding whitespace, none of the
# forms int() also takes.
_INTEGER = re.compile(r"[0-9]+", re.ASCII)
# A plain decimal: no nan, inf, hex, underscores or surrounding whitespace, which float() takes.
_DECIMAL = re.compile(r"\+?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", re.ASCII)

# Bounds for callers that name none: no setting of the project needs more.
MAX_INT = 2**31 - 1
MAX_SECONDS = 7 * 86400.0
MAX_TEXT_CHARS = 200

_FLAG_VALUES = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def _raw(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return None if raw is None or raw == "" else raw


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def _integer_refused(name: str, low: int, high: int, got: object) -> errors.ConfigError:
    return errors.ConfigError(
        f"{name} must be an integer from {low} to {high}, got {errors.preview(got)}"
    )


def _seconds_refused(name: str, high: float, got: object) -> errors.ConfigError:
    return errors.ConfigError(
        f"{name} must be a number of seconds above 0 and at most {_shown(high)}, "
        f"got {errors.preview(got)}"
    )


def integer(env: Mapping[str, str], name: str, default: int, *, low: int = 1, high: int) -> int:
    """Return ``env[name]`` as an integer from ``low`` to ``high`` (``default`` when unset)."""
    raw = _raw(env, name)
    if raw is None:
        return default
    # Compared as text before int(): a 5,000-digit value must not cost a conversion.
    if _INTEGER.fullmatch(raw) and len(raw.lstrip("0")) <= len(str(high)):
        value = int(raw)
        if low <= value <= high:
            return value
    raise _integer_refused(name, low, high, raw)


def seconds(env: Mapping[str, str], name: str, default: float, *, high: float) -> float:
    """Return ``env[name]`` as a finite number of seconds above 0 and at most ``high``."""
    raw = _raw(env, name)
    if raw is None:
        return default
    if _DECIMAL.fullmatch(raw):
        value = float(raw)  # finite: the pattern has no nan or inf, and 1e999 is above high
        if 0 < value <= high:
            return value
    raise _seconds_refused(name, high, raw)


def check_integer(name: str, value: object, *, low: int = 1, high: int) -> None:
    """Raise the ConfigError of ``integer`` unless ``value`` is an int from ``low`` to ``high``.

    For values given in code rather than read from the environment (``Settings(...)``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _integer_refused(name, low, high, value)


def check_seconds(name: str, value: object, *, high: float) -> None:
    """Raise the ConfigError of ``seconds`` unless ``value`` is a number above 0, at most
    ``high`` (so never nan or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
        raise _seconds_refused(name, high, value)


def positive_int(env: Mapping[str, str], name: str, default: int, *, high: int = MAX_INT) -> int:
    """Return ``env[name]`` as an integer from 1 to ``high`` (``default`` when unset)."""
    return integer(env, name, default, high=high)


def positive_float(
    env: Mapping[str, str], name: str, default: float, *, high: float = MAX_SECONDS
) -> float:
    """Return ``env[name]`` as seconds above 0 and at most ``high`` (``default`` when unset)."""
    return seconds(env, name, default, high=high)


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Return ``env[name]`` as a boolean: 1/0, true/false, yes/no or on/off, in any case."""
    raw = _raw(env, name)
    if raw is None:
        return default
    value = _FLAG_VALUES.get(raw.strip().lower())
    if value is None:
        raise errors.ConfigError(
            f"{name} must be 1/0, true/false, yes/no or on/off, got {errors.preview(raw)}"
        )
    return value


def text(
    env: Mapping[str, str], name: str, default: str, *, max_chars: int = MAX_TEXT_CHARS
) -> str:
    """Return ``env[name]``: printable text of at most ``max_chars`` characters."""
    raw = _raw(env, name)
    if raw is None:
        return default
    # Bytes that are not UTF-8 reach Python as lone surrogates, which are not printable.
    if len(raw) > max_chars or not raw.isprintable():
        raise errors.ConfigError(
            f"{name} must be printable text of at most {max_chars} characters, "
            f"got {errors.preview(raw)}"
        )
    return raw


def url(
    env: Mapping[str, str],
    name: str,
    default: str,
    *,
    kind: str,
    schemes: Collection[str],
    shown: str | None = None,
    failover: bool = False,
) -> str:
    """Return ``env[name]`` if it is a URL with one of ``schemes`` and a valid port.

    ``kind`` names the URL in the message (``Redis``); ``shown`` lists what it accepts (by
    default every scheme). With ``failover``, ``;`` separates several URLs, as Kombu allows.
    A scheme may carry a driver after ``+`` (``db+postgresql://``); the part before counts.
    """
    raw = _raw(env, name)
    if raw is None:
        return default
    accepted = shown or ", ".join(f"{scheme}://" for scheme in schemes)
    for part in raw.split(";") if failover else [raw]:
        problem = _url_problem(part.strip(), schemes, kind, accepted)
        if problem is not None:
            raise errors.ConfigError(f"{name} is not a valid {kind} URL: {problem}")
    return raw


def _url_problem(value: str, schemes: Collection[str], kind: str, accepted: str) -> str | None:
    scheme, separator, _ = value.partition("://")
    if not separator or scheme.partition("+")[0] not in schemes:
        # The scheme alone is quoted: the rest of a URL may hold a password.
        got = f", got {scheme + '://'!r}" if separator and _SCHEME.fullmatch(scheme) else ""
        return f"{kind} URL must specify one of the following schemes ({accepted}){got}"
    if not value.isprintable() or any(c.isspace() for c in value):
        return "it contains spaces or control characters"
    try:
        urllib.parse.urlsplit(value).port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "its host and port cannot be read (the port must be a number up to 65535)"
    return None


# The largest database number a Redis server can have (its ``databases`` is at most INT_MAX).
MAX_REDIS_DATABASE = 2**31 - 1
_DATABASE = re.compile(r"[0-9]{1,10}", re.ASCII)
_REDIS_PATH = re.compile(r"/?([0-9]{1,10})?", re.ASCII)
# Kombu's Redis transport strips up to two slashes before the number (``redis://host//``).
_KOMBU_REDIS_PATH = re.compile(r"(?:/{1,2}([0-9]{1,10})?)?", re.ASCII)


def redis_url(env: Mapping[str, str], name: str, default: str, *, schemes: Collection[str]) -> str:
    """Return ``env[name]`` if it is a Redis URL (see ``url``) whose database is plain.

    redis-py reads the database from the path (``/2``) or a ``db=`` query, and silently uses
    database 0 for any path it cannot read (``/abc``, ``/7/extra``): here such a URL is
    refused. A ``unix://`` URL's path is its socket, so only ``db=`` names its database.
    """
    value = url(env, name, default, kind="Redis", schemes=schemes)
    if _raw(env, name) is not None:
        problem = redis_database_problem(value)
        if problem is not None:
            raise errors.ConfigError(f"{name} is not a valid Redis URL: {problem}")
    return value


def redis_database_problem(value: str) -> str | None:
    """What is wrong with the database that the Redis URL ``value`` names, if anything.

    Neither the path nor the query is quoted back: a query may hold a password.
    """
    parts = urllib.parse.urlsplit(value)
    numbers = []
    if parts.scheme != "unix":
        match = _REDIS_PATH.fullmatch(urllib.parse.unquote(parts.path))
        if match is None:
            return "its path must be empty, / or a database number such as /0"
        if match[1] is not None:
            numbers.append(int(match[1]))
    path_number = numbers[0] if numbers else None
    for given in urllib.parse.parse_qs(parts.query).get("db", []):
        if not _DATABASE.fullmatch(given):
            return "its db= query must be a database number such as db=0"
        numbers.append(int(given))
    if any(number > MAX_REDIS_DATABASE for number in numbers):
        return f"its database number must be at most {MAX_REDIS_DATABASE}"
    if len(set(numbers)) > 1:
        if path_number is not None:
            other = next(number for number in numbers if number != path_number)
            return f"it names database {path_number} in its path and {other} in its db= query"
        return "its db= queries name different databases"
    return None


def kombu_redis_database_problem(value: str) -> str | None:
    """What is wrong with the database of the broker URL ``value`` (``redis://`` or
    ``rediss://``) as Kombu's Redis transport reads it, from the path alone, if anything."""
    match = _KOMBU_REDIS_PATH.fullmatch(urllib.parse.unquote(urllib.parse.urlsplit(value).path))
    if match is None:
        return "its path must be empty, / or a database number such as /0"
    if match[1] is not None and int(match[1]) > MAX_REDIS_DATABASE:
        return f"its database number must be at most {MAX_REDIS_DATABASE}"
    return None
