"""Errors of the drain side; the producer's errors live in models.errors.

The sink adapters translate their driver's errors into these, so the drain core and the task
layer only ever decide on our own types: a refusal is about one run's entries and counts
towards parking it; an outage is about the sink as a whole and is retried, never counted.
"""

from __future__ import annotations

from models.errors import ConfigError, OutboxError

__all__ = ["ConfigError", "OutboxError", "PublishError", "SinkUnavailable", "StoreUnavailable"]


class PublishError(OutboxError):
    """The sink refused the run's entries."""


class SinkUnavailable(OutboxError):
    """The sink cannot take entries now (down, out of memory, read-only, loading); retried."""


class StoreUnavailable(OutboxError):
    """The database cannot be reached now (connection refused or broken); retried."""
