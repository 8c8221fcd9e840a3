"""SQLAlchemy models of the outbox, engine setup and the producer API."""

from __future__ import annotations

from models.base import Base
from models.db import get_engine, make_engine, session_factory
from models.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidPayload,
    InvalidRunId,
    OutboxError,
    PayloadTooLarge,
    RunExists,
    UnknownRun,
)
from models.ids import parse_run_id
from models.producer import append_event, create_run
from models.run import OutboxStatus, Run, RunEvent, RunOutbox

__all__ = [
    "Base",
    "ConfigError",
    "DatabaseUnavailable",
    "InvalidPayload",
    "InvalidRunId",
    "OutboxError",
    "OutboxStatus",
    "PayloadTooLarge",
    "Run",
    "RunEvent",
    "RunExists",
    "RunOutbox",
    "UnknownRun",
    "append_event",
    "create_run",
    "get_engine",
    "make_engine",
    "parse_run_id",
    "session_factory",
]
