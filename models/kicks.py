"""Where a committed transaction's kicks go: a registration both sides of the project share.

``append_event(..., kick=True)`` asks for the run to be drained right after the commit. The
models cannot send a drain themselves (they do not know Celery or Redis, and must not
import the tasks package), so the tasks side registers the function that does:
``tasks.outbox`` calls ``set_kicker`` when it is imported, which ``from tasks import app``
and ``celery -A tasks`` both do. Tests may register their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from models import errors

Kicker = Callable[[Sequence[uuid.UUID]], None]

_kicker: Kicker | None = None


def set_kicker(kicker: Kicker | None) -> Kicker | None:
    """Register ``kicker`` (None: none); return the one it replaces."""
    global _kicker
    previous, _kicker = _kicker, kicker
    return previous


def kicker() -> Kicker:
    """Return the registered kicker, or raise ConfigError saying how to register one."""
    if _kicker is None:
        raise errors.ConfigError(
            "append_event(kick=True) needs the outbox's Celery app in this process: import it "
            "once at start-up (`from tasks import app`), or set OUTBOX_KICK_ON_COMMIT=0"
        )
    return _kicker
