"""The process-wide collaborators of the tasks and the CLI, built from the environment once.

Only the task layer (``tasks.outbox``, ``tasks.api``) and the CLI look the runtime up; the
drain core and the jobs take their collaborators as arguments. Tests and applications that
want other collaborators call ``configure(...)`` (and ``reset()`` to go back to the
environment's); nothing needs environment variables changed.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

from models.db import session_factory as make_session_factory
from tasks import redis_sink
from tasks.jobs import Worker
from tasks.outages import OutageLog, SinkGate
from tasks.pg import SessionFactory, SqlStore
from tasks.queueing import DrainQueue, Sender
from tasks.redis_marks import KickedSet, QueuedMarks
from tasks.settings import Settings
from tasks.sink import Sink


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Settings plus the database, sink and queue collaborators built from them."""

    settings: Settings
    session_factory: SessionFactory
    redis: redis_sink.Client  # a single server's client or a cluster's (OUTBOX_REDIS_CLUSTER)
    store: SqlStore
    sink: Sink
    marks: QueuedMarks
    kicked: KickedSet
    gate: SinkGate
    database: OutageLog

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        session_factory: SessionFactory | None = None,
        redis_client: redis_sink.Client | None = None,
        sink: Sink | None = None,
    ) -> Runtime:
        """Build the collaborators that are not given from ``settings``."""
        client = redis_client or redis_sink.connect(
            settings.redis_url, cluster=settings.redis_cluster, timeout=settings.redis_timeout
        )
        store = SqlStore(session_factory or make_session_factory(settings.database_url))
        return cls(
            settings=settings,
            session_factory=store.session_factory,
            redis=client,
            store=store,
            sink=sink or redis_sink.RedisStreamSink(client, settings.stream_prefix),
            marks=QueuedMarks(client, settings.queued_prefix),
            kicked=KickedSet(client, settings.queued_prefix),
            gate=SinkGate(store, longest_check=settings.outage_check_max),
            database=OutageLog("database"),
        )

    def worker(self, sender: Sender) -> Worker:
        """What the tasks need, sending drains with ``sender``."""
        return Worker(
            store=self.store,
            sink=self.sink,
            queue=self.queue(self.marks, self.kicked, sender),
            gate=self.gate,
            cursor=self.marks,
            kicked=self.kicked,
            limits=self.settings.limits,
            kick_linger=self.settings.kick_linger,
            database=self.database,
        )

    def queue(self, marks: QueuedMarks, kicked: KickedSet, sender: Sender) -> DrainQueue:
        """A DrainQueue over these marks and this sender, with the settings' group and TTL."""
        return DrainQueue(
            marks,
            kicked,
            sender,
            group_size=self.settings.group_size,
            ttl=self.settings.queued_ttl,
        )

    def kick_queue(self, sender: Sender) -> DrainQueue:
        """The producers' DrainQueue: its own Redis client, with the kick's short timeout and
        no retries, so a kick costs ``kick_timeout`` at worst."""
        client = redis_sink.connect(
            self.settings.redis_url,
            cluster=self.settings.redis_cluster,
            timeout=self.settings.kick_timeout,
            retries=0,
        )
        prefix = self.settings.queued_prefix
        return self.queue(QueuedMarks(client, prefix), KickedSet(client, prefix), sender)


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
