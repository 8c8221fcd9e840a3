"""SQLAlchemy models of the outbox, engine setup and the producer API.

The names below are imported on first use (PEP 562), so a process that needs only a light
module of the package (``models.embedded`` for ``outbox services``, ``models.errors``) does not
pay for SQLAlchemy's import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each public name, and the module that defines it.
_HOMES = {
    "Base": "models.run",  # from the tables' module, so Base.metadata holds every table
    **dict.fromkeys(("get_engine", "make_engine", "session_factory"), "models.db"),
    **dict.fromkeys(
        (
            "ConfigError",
            "DatabaseUnavailable",
            "InvalidPayload",
            "InvalidRunId",
            "OutboxError",
            "PayloadTooLarge",
            "RunExists",
            "UnknownRun",
        ),
        "models.errors",
    ),
    "parse_run_id": "models.ids",
    **dict.fromkeys(("append_event", "create_run"), "models.producer"),
    **dict.fromkeys(("OutboxStatus", "Run", "RunEvent", "RunOutbox"), "models.run"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


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
