"""The process-wide collaborators the tasks and the CLI use: built from the environment once.

Tests and applications that want other collaborators call ``configure(...)`` (and ``reset()``
to go back to the environment's); nothing needs environment variables changed.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

from redis import Redis

from models.db import session_factory as make_session_factory
from tasks import streams
from tasks.drain import SessionFactory
from tasks.settings import Settings
from tasks.streams import KickedRuns, Publisher, QueuedDrains


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Settings plus the database, sink, queue-mark and kick collaborators built from them."""

    settings: Settings
    session_factory: SessionFactory
    redis: Redis
    publisher: Publisher
    queued: QueuedDrains
    kicked: KickedRuns

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        session_factory: SessionFactory | None = None,
        redis_client: Redis | None = None,
        publisher: Publisher | None = None,
    ) -> Runtime:
        """Build the collaborators that are not given from ``settings``."""
        client = redis_client or streams.connect(settings.redis_url, timeout=settings.redis_timeout)
        return cls(
            settings=settings,
            session_factory=session_factory or make_session_factory(settings.database_url),
            redis=client,
            publisher=publisher or streams.RedisStreamPublisher(client, settings.stream_prefix),
            queued=QueuedDrains(client, settings.queued_prefix, settings.queued_ttl),
            kicked=KickedRuns(client, settings.queued_prefix, settings.queued_ttl),
        )


_lock = threading.Lock()
_current: Runtime | None = None


def current() -> Runtime:
    """Return this process's runtime, building it from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Runtime.build(Settings.from_env())
        return _current


def configure(settings: Settings | None = None, **collaborators: Any) -> Runtime:
    """Replace this process's runtime (settings default to the environment's)."""
    global _current
    runtime = Runtime.build(settings or Settings.from_env(), **collaborators)
    with _lock:
        _current = runtime
    return runtime


def reset() -> None:
    """Forget the runtime; the next use builds it from the environment again."""
    global _current
    with _lock:
        _current = None


def _after_fork() -> None:
    # redis-py resets its pool in a forked child by itself, and models.db drops inherited
    # database connections; only the lock must be new.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
