"""Errors of the drain side, as the drain code imports them; every class is defined, with
the whole hierarchy, in models.errors.

The sink adapters translate their driver's errors into these, so the drain core and the task
layer only ever decide on our own types: a refusal is about one run's entries and counts
towards parking it; an outage is about the sink as a whole and is retried, never counted.
"""

from __future__ import annotations

from models.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidTaskArguments,
    OutboxError,
    PublishError,
    RunBusy,
    SinkUnavailable,
    StreamUnreadable,
)

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "InvalidTaskArguments",
    "OutboxError",
    "PublishError",
    "RunBusy",
    "SinkUnavailable",
    "StoreUnavailable",
    "StreamUnreadable",
    "missing_database",
]


# The database cannot be reached now (connection refused or broken); retried. One class with
# the producer's error, so that ``except StoreUnavailable`` also catches what it raises.
StoreUnavailable = DatabaseUnavailable


def missing_database(database: int, databases: int | None = None) -> ConfigError:
    """The error for a sink whose server refused ``SELECT database``: it has ``databases``
    (when known; ``CONFIG GET databases`` may be refused)."""
    count = f"it has {databases}; " if databases is not None else ""
    return ConfigError(
        f"database {database} does not exist on this server ({count}see OUTBOX_REDIS_URL)"
    )
