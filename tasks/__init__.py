"""The Celery app, the drain API and the tasks of the outbox publisher.

``celery -A tasks worker`` and ``celery -A tasks beat`` find ``app`` here.
"""

from __future__ import annotations

from tasks.celery_app import app
from tasks.drain import (
    DrainResult,
    PassResult,
    Status,
    drain_outbox_for_run,
    drain_outbox_for_runs,
    drain_outbox_once,
    resume,
)
from tasks.outbox import dispatch, drain_kicked, drain_run, drain_runs
from tasks.settings import Settings

__all__ = [
    "DrainResult",
    "PassResult",
    "Settings",
    "Status",
    "app",
    "dispatch",
    "drain_kicked",
    "drain_outbox_for_run",
    "drain_outbox_for_runs",
    "drain_outbox_once",
    "drain_run",
    "drain_runs",
    "resume",
]
