"""Errors raised by the producer API; every error of the project derives from OutboxError."""

from __future__ import annotations


class OutboxError(Exception):
    """Outbox operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidRunId(OutboxError, ValueError):
    """Run id is not a UUID."""


class UnknownRun(OutboxError, LookupError):
    """No run with this id exists."""


class RunExists(OutboxError):
    """A run with this id exists already."""


class InvalidPayload(OutboxError, ValueError):
    """Payload cannot be stored as JSON."""


class PayloadTooLarge(InvalidPayload):
    """Payload is larger than the configured limit."""


class ConfigError(OutboxError):
    """Configuration is invalid."""


class DatabaseUnavailable(OutboxError):
    """The database cannot be reached now (connection refused or broken); retried.

    What the producer API raises instead of the driver's error when its connection fails,
    and what the drain side calls ``tasks.errors.StoreUnavailable`` (the same class).
    """


def preview(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters: errors never echo a huge input."""
    if isinstance(value, (bytes, str)) and len(value) > limit:
        unit = "bytes" if isinstance(value, bytes) else "characters"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    text = repr(value)
    return text if len(text) <= limit + 20 else f"{text[: limit + 20]}..."
