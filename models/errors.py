"""Every error class of the project, in one hierarchy (the one place to read it).

    OutboxError
    ├── InvalidRunId (ValueError)      a run id that is not a UUID
    ├── UnknownRun (LookupError)       no run with this id
    ├── RunExists                      create_run with an id that is taken
    ├── InvalidPayload (ValueError)    a payload or type that cannot be stored
    │   └── PayloadTooLarge            over OUTBOX_MAX_PAYLOAD_BYTES
    ├── ConfigError                    a setting, or the process's set-up, is wrong
    ├── DatabaseUnavailable            PostgreSQL cannot be reached (tasks.errors.StoreUnavailable)
    ├── SinkUnavailable                the sink as a whole cannot take entries now; retried
    ├── PublishError                   the sink refused a run's entries
    ├── InvalidTaskArguments (TypeError)  a task message whose arguments do not fit
    ├── RunBusy                        verify or replay could not lock a run in time
    └── StreamUnreadable               a run's stream key holds something else

The producer API raises the first seven; the drain side (``tasks``) the others, and
``tasks.errors`` re-exports them where the drain code imports them from. The models package
imports nothing of ``tasks``, so the hierarchy lives here, at the bottom of both.
"""

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


class SinkUnavailable(OutboxError):
    """The sink cannot take entries now (down, out of memory, read-only, loading); retried."""


class PublishError(OutboxError):
    """The sink refused the run's entries."""


class InvalidTaskArguments(OutboxError, TypeError):
    """A task was sent arguments that its signature does not take."""


class RunBusy(OutboxError):
    """The run's cursor row stayed locked (a long replay holds it); try again later."""


class StreamUnreadable(OutboxError):
    """The run's stream key cannot be read as a stream (it holds another type)."""


def preview(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters: errors never echo a huge input."""
    if isinstance(value, (bytes, str)) and len(value) > limit:
        unit = "bytes" if isinstance(value, bytes) else "characters"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    text = repr(value)
    return text if len(text) <= limit + 20 else f"{text[: limit + 20]}..."
