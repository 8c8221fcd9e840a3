"""Where a committed transaction's kicks go: a registration both sides of the project share.

``append_event(..., kick=True)`` asks for the run to be drained right after the commit. The
models cannot send a drain themselves (they do not know Celery or Redis, and never load the
tasks package), so the tasks side registers the function that does: ``tasks.outbox`` calls
``set_kicker`` when it is imported, which ``from tasks import app`` and ``celery -A tasks`` do.
A process that has merely run ``import tasks`` (which loads no Celery) has asked for the tasks
side all the same: the first kick completes that import (``tasks.outbox``), and the kicker is
then registered. Tests may register their own.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from models import errors

Kicker = Callable[[Sequence[uuid.UUID]], None]

_kicker: Kicker | None = None

# The outbox's own tasks package: beside this package (in site-packages, or the checkout).
_OWN_TASKS = Path(__file__).resolve().parents[1] / "tasks" / "__init__.py"


def set_kicker(kicker: Kicker | None) -> Kicker | None:
    """Register ``kicker`` (None: none); return the one it replaces."""
    global _kicker
    previous, _kicker = _kicker, kicker
    return previous


def kicker() -> Kicker:
    """Return the registered kicker, or raise ConfigError saying how to register one."""
    if _kicker is None and _tasks_imported():
        importlib.import_module("tasks.outbox")  # registers the app's kicker (set_kicker)
    if _kicker is None:
        raise errors.ConfigError(
            "append_event(kick=True) needs the outbox's Celery app in this process: "
            "`import tasks` once at start-up, or ask for no kick (drop kick=True; unset "
            "OUTBOX_KICK_ON_COMMIT): beat's dispatch drains the run all the same"
        )
    return _kicker


def _tasks_imported() -> bool:
    """Whether this process imported the outbox's own ``tasks`` (not an application's)."""
    module = sys.modules.get("tasks")
    origin = getattr(module, "__file__", None)
    return origin is not None and Path(origin).resolve() == _OWN_TASKS
