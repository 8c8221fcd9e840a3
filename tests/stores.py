"""The outbox tables seen from outside the drain, for tests: a store to drain plus the means to
seed it, delete from it, hold a run and read a run's state back, in memory and on PostgreSQL.

The store contract suite (tests/contract/test_store.py) and the state machine
(tests/statemachine) both use these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import append_event, create_run
from tasks.pg import SqlStore
from tasks.store import Store
from tests.fakes import InMemoryStore


@dataclasses.dataclass(frozen=True)
class State:
    next_seq: int
    status: str
    attempts: int
    last_error: str | None
    published: frozenset[int]


class Kit(Protocol):
    store: Store

    def create(self, events: int = 0, pad: int = 0) -> uuid.UUID: ...
    def append(self, run_id: uuid.UUID, events: int = 1, pad: int = 0) -> None: ...
    def delete(self, run_id: uuid.UUID) -> None: ...
    def hold(self, run_id: uuid.UUID) -> contextlib.AbstractContextManager[None]:
        """Another transaction holds the run's cursor while the block runs."""
        ...

    def state(self, run_id: uuid.UUID) -> State | None:
        """The run's cursor and published events; None when the run does not exist."""
        ...


def _payload(seq: int, pad: int) -> dict[str, object]:
    return {"n": seq, "pad": "x" * pad} if pad else {"n": seq}


class MemoryKit:
    def __init__(self) -> None:
        self.store = InMemoryStore()

    def create(self, events: int = 0, pad: int = 0) -> uuid.UUID:
        run_id = self.store.create_run()
        self.append(run_id, events, pad)
        return run_id

    def append(self, run_id: uuid.UUID, events: int = 1, pad: int = 0) -> None:
        if events:
            self.store.append(run_id, events, size=pad)

    def delete(self, run_id: uuid.UUID) -> None:
        del self.store.runs[run_id]

    @contextlib.contextmanager
    def hold(self, run_id: uuid.UUID) -> Iterator[None]:
        self.store.busy.add(run_id)
        try:
            yield
        finally:
            self.store.busy.discard(run_id)

    def state(self, run_id: uuid.UUID) -> State | None:
        run = self.store.runs.get(run_id)
        if run is None:
            return None
        published = frozenset(run.published)
        return State(run.next_seq, run.status, run.attempts, run.last_error, published)


class SqlKit:
    def __init__(self, session: sessionmaker[Session]) -> None:
        self.session = session
        self.store = SqlStore(session)

    def create(self, events: int = 0, pad: int = 0) -> uuid.UUID:
        with self.session() as s, s.begin():
            run_id = create_run(s).id
        self.append(run_id, events, pad)
        return run_id

    def append(self, run_id: uuid.UUID, events: int = 1, pad: int = 0) -> None:
        with self.session() as s, s.begin():
            for _ in range(events):
                seq = s.execute(
                    text("SELECT last_seq + 1 FROM runs WHERE id = :id"), {"id": run_id}
                ).scalar_one()
                append_event(s, run_id, "t", _payload(seq, pad), kick=False)

    def delete(self, run_id: uuid.UUID) -> None:
        with self.session() as s, s.begin():
            s.execute(text("DELETE FROM runs WHERE id = :id"), {"id": run_id})

    @contextlib.contextmanager
    def hold(self, run_id: uuid.UUID) -> Iterator[None]:
        with self.session() as s, s.begin():
            s.execute(
                text("SELECT 1 FROM run_outbox WHERE run_id = :id FOR UPDATE"), {"id": run_id}
            )
            yield

    def state(self, run_id: uuid.UUID) -> State | None:
        with self.session() as s:
            row = s.execute(
                text(
                    "SELECT next_seq, status, attempts, last_error FROM run_outbox"
                    " WHERE run_id = :id"
                ),
                {"id": run_id},
            ).one_or_none()
            if row is None:
                return None
            published = s.execute(
                text("SELECT seq FROM run_events WHERE run_id = :id AND published_at IS NOT NULL"),
                {"id": run_id},
            ).scalars()
            return State(
                row.next_seq, row.status, row.attempts, row.last_error, frozenset(published)
            )
