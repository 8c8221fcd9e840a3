"""The Celery app, the drain API and the tasks of the outbox publisher.

``celery -A tasks worker`` and ``celery -A tasks beat`` find ``app`` here. The names are
loaded on first use (a module ``__getattr__``), so ``import tasks.drain`` and the other plain
modules never load Celery or Redis. ``import tasks`` is also enough for
``append_event(kick=True)``: the first kick loads the app (``models.kicks``).

Before anything here imports ``models``, this checks that the name is the outbox's own
package, not an application's ``models/`` found first on sys.path (``outbox_names``): one
line naming the file, never an ImportError from deep inside.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import outbox_names

outbox_names.refuse("models")

if TYPE_CHECKING:
    from tasks.api import drain_outbox_for_run, drain_outbox_for_runs, drain_outbox_once, resume
    from tasks.celery_app import app
    from tasks.drain import DrainResult, Fault, PassResult, Status
    from tasks.outbox import dispatch, drain_kicked, drain_run, drain_runs
    from tasks.settings import Settings

# Each public name and the module that defines it. The app comes with its tasks registered.
_NAMES = {
    "app": "tasks.outbox",
    "dispatch": "tasks.outbox",
    "drain_kicked": "tasks.outbox",
    "drain_run": "tasks.outbox",
    "drain_runs": "tasks.outbox",
    "drain_outbox_for_run": "tasks.api",
    "drain_outbox_for_runs": "tasks.api",
    "drain_outbox_once": "tasks.api",
    "resume": "tasks.api",
    "DrainResult": "tasks.drain",
    "Fault": "tasks.drain",
    "PassResult": "tasks.drain",
    "Status": "tasks.drain",
    "Settings": "tasks.settings",
}

__all__ = [
    "DrainResult",
    "Fault",
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


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
