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
