"""The two worlds the exactly-once state machine runs in: the in-memory store and sink, and
the SQL store on a real PostgreSQL with the Redis sink on a real Redis.

A world gives the machine what a producer, an operator and the faults do (create, append in a
transaction that commits or rolls back, delete a run, write a foreign entry, delete a stream,
make the sink refuse a run or go away) and lets it read back what the store and the sink hold.
The drain itself is the package's own, over ``world.store`` and ``world.sink()``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Protocol

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import append_event, create_run
from tasks import redis_sink
from tasks.sink import Entry, InMemorySink, PublishOutcome, Sink, StreamEntry
from tasks.store import Store
from tests.fakes import Event
from tests.helpers import unreachable_redis
from tests.stores import MemoryKit, SqlKit, State

OUTAGE = "Redis unavailable: ConnectionError (the state machine's outage)"


class World(Protocol):
    store: Store

    def sink(self) -> Sink:
        """The sink a drain publishes to now: unreachable while ``outage`` is set."""
        ...

    outage: bool

    def create_run(self, run_id: uuid.UUID) -> None: ...
    def append(self, run_id: uuid.UUID, payloads: Sequence[dict[str, str]], commit: bool) -> None:
        """Append events of type ``step`` in one transaction, committed or rolled back."""
        ...

    def delete_run(self, run_id: uuid.UUID) -> None: ...
    def cursor(self, run_id: uuid.UUID) -> State | None: ...
    def stream(self, run_id: uuid.UUID) -> list[StreamEntry]: ...
    def put_foreign(self, run_id: uuid.UUID, seq: int, payload: str) -> None: ...
    def delete_stream(self, run_id: uuid.UUID) -> None: ...
    def refuse(self, run_id: uuid.UUID) -> None:
        """The sink refuses the run's entries (its stream must be empty) until ``accept``."""
        ...

    def accept(self, run_id: uuid.UUID) -> None: ...


class Crash(Exception):
    """The drainer died after the sink took its batch and before the store committed."""


class CrashingSink:
    """Publishes to ``inner``, then dies: the batch's transaction never commits."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.outcome: PublishOutcome | None = None
        self.entries: list[Entry] = []

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        self.entries = list(entries)
        self.outcome = self.inner.publish(entries)
        raise Crash


class MemoryWorld:
    def __init__(self) -> None:
        self.kit = MemoryKit()
        self.store = self.kit.store
        self.memory = InMemorySink()
        self.outage = False
        self._next_id = 1

    def sink(self) -> Sink:
        self.memory.unavailable = OUTAGE if self.outage else None
        return self.memory

    def create_run(self, run_id: uuid.UUID) -> None:
        self.store.create_run(run_id)

    def append(self, run_id: uuid.UUID, payloads: Sequence[dict[str, str]], commit: bool) -> None:
        if not commit:
            return  # a rolled-back transaction leaves nothing in the tables
        run = self.store.runs[run_id]
        for payload in payloads:
            seq = len(run.events) + 1
            run.events.append(Event(run_id, self._next_id, seq, "step", json.dumps(payload)))
            self._next_id += 1

    def delete_run(self, run_id: uuid.UUID) -> None:
        self.kit.delete(run_id)

    def cursor(self, run_id: uuid.UUID) -> State | None:
        return self.kit.state(run_id)

    def stream(self, run_id: uuid.UUID) -> list[StreamEntry]:
        return self.memory.entries(run_id)

    def put_foreign(self, run_id: uuid.UUID, seq: int, payload: str) -> None:
        self.memory.put(run_id, StreamEntry(seq, "foreign", payload))

    def delete_stream(self, run_id: uuid.UUID) -> None:
        self.memory.streams.pop(run_id, None)
        self.memory.top.pop(run_id, None)

    def refuse(self, run_id: uuid.UUID) -> None:
        self.memory.refuse(run_id, "WRONGTYPE Operation against a key holding the wrong kind")

    def accept(self, run_id: uuid.UUID) -> None:
        self.memory.accept(run_id)


class SqlWorld:
    """The SQL store on this test's database, the Redis sink under a prefix of its own."""

    def __init__(self, session: sessionmaker[Session], client: redis.Redis, prefix: str) -> None:
        self.session = session
        self.client = client
        self.prefix = prefix
        self.kit = SqlKit(session)
        self.store = self.kit.store
        self.redis = redis_sink.RedisStreamSink(client, prefix)
        self.unreachable = redis_sink.RedisStreamSink(unreachable_redis(), prefix)
        self.outage = False
        with session() as s, s.begin():  # each example starts from empty tables
            s.execute(text("TRUNCATE runs, run_events, run_outbox, sink_health"))

    def sink(self) -> Sink:
        return self.unreachable if self.outage else self.redis

    def key(self, run_id: uuid.UUID) -> str:
        return redis_sink.stream_key(self.prefix, run_id)

    def create_run(self, run_id: uuid.UUID) -> None:
        with self.session() as s, s.begin():
            create_run(s, run_id)

    def append(self, run_id: uuid.UUID, payloads: Sequence[dict[str, str]], commit: bool) -> None:
        with self.session() as s:
            for payload in payloads:
                append_event(s, run_id, "step", payload, kick=False)
            if commit:
                s.commit()
            else:
                s.rollback()

    def delete_run(self, run_id: uuid.UUID) -> None:
        self.kit.delete(run_id)

    def cursor(self, run_id: uuid.UUID) -> State | None:
        return self.kit.state(run_id)

    def stream(self, run_id: uuid.UUID) -> list[StreamEntry]:
        if self.client.type(self.key(run_id)) != b"stream":
            return []
        return redis_sink.read_stream(self.client, self.prefix, run_id)

    def put_foreign(self, run_id: uuid.UUID, seq: int, payload: str) -> None:
        fields = {"type": "foreign", "payload": payload}
        self.client.xadd(self.key(run_id), fields, id=f"{seq}-0")  # type: ignore[arg-type]

    def delete_stream(self, run_id: uuid.UUID) -> None:
        self.client.delete(self.key(run_id))

    def refuse(self, run_id: uuid.UUID) -> None:
        self.client.set(self.key(run_id), "not a stream")  # WRONGTYPE for every XADD

    def accept(self, run_id: uuid.UUID) -> None:
        self.client.delete(self.key(run_id))
