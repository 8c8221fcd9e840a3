"""The drain side's PostgreSQL adapters, over one translation of the driver's errors.

* ``SqlStore`` (with ``SqlBatch``, one drain transaction) is the ``tasks.store.Store``;
* ``SqlLedger`` (with ``SqlHeldRun``) is the ``tasks.verify.Ledger`` that verify and replay read;
* ``SqlPurgeStore`` is the ``tasks.purge.PurgeStore``.

Their SQL lives in ``tasks.sql``. Every statement runs inside ``translated``, so a database that
went away reads the same, ``PostgreSQL unavailable: ...``, whichever adapter met it, and the
layers above never see a driver's error type.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from models.errors import UnknownRun
from tasks import sql
from tasks.errors import RunBusy, StoreUnavailable
from tasks.store import MAX_ERROR_CHARS, Cursor, Locked, Row, SinkHealth
from tasks.verify import LOCK_TIMEOUT, Event

SessionFactory = Callable[[], Session]

# What the driver raises for a server that is down, restarting, or cut off mid-statement.
CONNECTION_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError)
LOCK_NOT_AVAILABLE = "55P03"  # the SQLSTATE of a lock_timeout that expired


def unavailable(exc: sa_exc.DBAPIError) -> StoreUnavailable:
    """The project's error for a driver's connection error."""
    return StoreUnavailable(f"PostgreSQL unavailable: {str(exc.orig).strip()}")


@contextlib.contextmanager
def translated(busy: Callable[[], Exception] | None = None) -> Iterator[None]:
    """Turn the driver's connection errors raised inside the block into StoreUnavailable.

    With ``busy``, a lock_timeout that expired raises what ``busy`` returns instead.
    """
    try:
        yield
    except CONNECTION_ERRORS as exc:
        if busy is not None and getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            raise busy() from exc
        raise unavailable(exc) from exc


@contextlib.contextmanager
def autocommit(session_factory: SessionFactory) -> Iterator[Connection]:
    """A connection whose every statement is its own transaction.

    A lone statement needs no transaction: autocommit spares the BEGIN and ROLLBACK, and the
    statement's row locks end with it.
    """
    with translated(), session_factory() as session:
        yield session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


@contextlib.contextmanager
def transaction(session_factory: SessionFactory) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back on an error."""
    with translated(), session_factory() as session, session.begin():
        yield session


# The store (tasks.store.Store).


class SqlBatch:
    """One drain transaction over a SQLAlchemy session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def lock(self, run_ids: Sequence[uuid.UUID]) -> Locked:
        ids = sorted(set(run_ids))
        runs = self.session.execute(sql.LOCK_RUNS, {"run_ids": ids}).scalars().all()
        rows = self.session.execute(sql.LOCK_CURSORS, {"run_ids": runs}).all()
        held = {
            r.run_id: Cursor(r.run_id, r.next_seq, r.status == "stalled", r.attempts) for r in rows
        }
        skipped = [run_id for run_id in ids if run_id not in held]
        busy: set[uuid.UUID] = set()
        if skipped:
            busy = set(self.session.execute(sql.EXISTING_RUNS, {"run_ids": skipped}).scalars())
        return Locked(held, busy)

    def read(self, cursors: Mapping[uuid.UUID, int], per_run: int, max_bytes: int) -> list[Row]:
        params = {
            "run_ids": list(cursors),
            "next_seqs": list(cursors.values()),
            "batch_size": per_run,
            "max_bytes": max_bytes,
        }
        rows: Any = self.session.execute(sql.READ_BATCH, params).all()
        return list(rows)  # result rows have the Row attributes: no object per event

    def mark_published(self, event_ids: Sequence[int], next_seqs: Mapping[uuid.UUID, int]) -> None:
        params = {
            "event_ids": list(event_ids),
            "run_ids": list(next_seqs),
            "next_seqs": list(next_seqs.values()),
        }
        self.session.execute(sql.MARK_PUBLISHED, params)

    def record_refusals(
        self, errors: Mapping[uuid.UUID, str], delays: Mapping[uuid.UUID, float], max_attempts: int
    ) -> set[uuid.UUID]:
        params = {
            "run_ids": list(errors),
            "errors": [error[:MAX_ERROR_CHARS] for error in errors.values()],
            "delays": [delays[run_id] for run_id in errors],
            "max_attempts": max_attempts,
        }
        rows = self.session.execute(sql.RECORD_REFUSALS, params).all()
        return {r.run_id for r in rows if r.status == "stalled"}

    def park(self, errors: Mapping[uuid.UUID, str]) -> None:
        params = {
            "run_ids": list(errors),
            "errors": [error[:MAX_ERROR_CHARS] for error in errors.values()],
        }
        self.session.execute(sql.PARK, params)


class SqlStore:
    """The Store (and the sink's health record) over a SQLAlchemy session factory."""

    def __init__(self, session_factory: SessionFactory) -> None:
        self.session_factory = session_factory

    @contextlib.contextmanager
    def batch(self) -> Iterator[SqlBatch]:
        with transaction(self.session_factory) as session:
            yield SqlBatch(session)

    def record_outage(self, run_ids: Sequence[uuid.UUID], error: str) -> None:
        if run_ids:
            params = {"run_ids": list(run_ids), "error": error[:MAX_ERROR_CHARS]}
            with autocommit(self.session_factory) as connection:
                connection.execute(sql.RECORD_OUTAGE, params)

    def runs_with_more(self, next_seqs: Mapping[uuid.UUID, int]) -> set[uuid.UUID]:
        if not next_seqs:
            return set()
        params = {"run_ids": list(next_seqs), "next_seqs": list(next_seqs.values())}
        with autocommit(self.session_factory) as connection:
            return set(connection.execute(sql.RUNS_WITH_MORE, params).scalars())

    def find_pending(
        self, limit: int, after: uuid.UUID | None = None, *, due_only: bool = True
    ) -> list[uuid.UUID]:
        query = sql.find_pending(after=after is not None, due_only=due_only)
        with autocommit(self.session_factory) as connection:
            return list(connection.execute(query, {"limit": limit, "after": after}).scalars())

    def resume(self, run_ids: Sequence[uuid.UUID] | None) -> list[uuid.UUID]:
        with transaction(self.session_factory) as session:
            if run_ids is None:
                return list(session.execute(sql.RESUME_ALL).scalars())
            return list(session.execute(sql.RESUME, {"run_ids": list(run_ids)}).scalars())

    # The sink's health record (tasks.outages.SinkGate).

    def sink_health(self) -> SinkHealth:
        with autocommit(self.session_factory) as connection:
            row = connection.execute(sql.SINK_HEALTH).one_or_none()
        if row is None:
            return SinkHealth()
        return SinkHealth(row.down_since, row.last_error, row.probes, bool(row.probe_due))

    def sink_down(self, error: str, first_check_in: float) -> bool:
        params = {"error": error[:MAX_ERROR_CHARS], "delay": first_check_in}
        with autocommit(self.session_factory) as connection:
            return connection.execute(sql.SINK_DOWN, params).first() is not None

    def claim_probe(self, probes: int, next_check_in: float) -> bool:
        params = {"probes": probes, "delay": next_check_in}
        with autocommit(self.session_factory) as connection:
            return connection.execute(sql.CLAIM_PROBE, params).first() is not None

    def sink_still_down(self, error: str) -> None:
        with autocommit(self.session_factory) as connection:
            connection.execute(sql.SINK_STILL_DOWN, {"error": error[:MAX_ERROR_CHARS]})

    def sink_up(self) -> float | None:
        with autocommit(self.session_factory) as connection:
            row = connection.execute(sql.SINK_UP).first()
        return None if row is None else float(row.seconds)


# The verify ledger (tasks.verify.Ledger).


class SqlHeldRun:
    """A run whose cursor row this session's transaction holds."""

    def __init__(self, session: Session, run_id: uuid.UUID, next_seq: int) -> None:
        self.session = session
        self.run_id = run_id
        self.next_seq = next_seq

    def published(self, after: int, limit: int, max_bytes: int) -> list[Event]:
        params = {
            "run_id": self.run_id,
            "after": after,
            "below": self.next_seq,
            "limit": limit,
            "max_bytes": max_bytes,
        }
        return self._events(sql.VERIFY_PUBLISHED, params)

    def events_at(self, seqs: Sequence[int]) -> list[Event]:
        if not seqs:
            return []
        return self._events(sql.VERIFY_EVENTS_AT, {"run_id": self.run_id, "seqs": list(seqs)})

    def _events(self, query: Any, params: dict[str, Any]) -> list[Event]:
        rows = self.session.execute(query, params).all()
        return [Event(self.run_id, r.id, r.seq, r.type, r.payload) for r in rows]


class SqlLedger:
    """The Ledger over the outbox tables (queries in ``tasks.sql``)."""

    def __init__(self, session_factory: SessionFactory, lock_timeout: float = LOCK_TIMEOUT):
        self.session_factory = session_factory
        self.lock_timeout = lock_timeout

    @contextlib.contextmanager
    def hold(self, run_id: uuid.UUID, *, exclusive: bool = False) -> Iterator[SqlHeldRun]:
        def busy() -> RunBusy:
            return RunBusy(
                f"run {run_id} stayed locked for {self.lock_timeout:g}s (a replay of it may be "
                "running); try again later"
            )

        with translated(busy), self.session_factory() as session, session.begin():
            timeout = f"{max(1, round(self.lock_timeout * 1000))}ms"
            session.execute(sql.VERIFY_LOCK_TIMEOUT, {"timeout": timeout})
            query = sql.VERIFY_HOLD_EXCLUSIVE if exclusive else sql.VERIFY_HOLD_SHARED
            next_seq = session.execute(query, {"run_id": run_id}).scalar_one_or_none()
            if next_seq is None:
                raise UnknownRun(f"no run with id {run_id}")
            yield SqlHeldRun(session, run_id, int(next_seq))

    def runs(self, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
        query = sql.VERIFY_RUNS if after is None else sql.VERIFY_RUNS_AFTER
        with autocommit(self.session_factory) as session:
            return list(session.execute(query, {"after": after, "limit": limit}).scalars())

    def count_runs(self) -> int:
        with autocommit(self.session_factory) as session:
            return int(session.execute(sql.VERIFY_COUNT_RUNS).scalar_one())


# The purge store (tasks.purge.PurgeStore).


class SqlPurgeStore:
    """The PurgeStore over a SQLAlchemy session factory; every statement is its own transaction."""

    def __init__(self, session_factory: SessionFactory) -> None:
        self.session_factory = session_factory

    def cutoff(self, older_than: float) -> dt.datetime:
        with autocommit(self.session_factory) as connection:
            value: dt.datetime = connection.execute(
                sql.PURGE_CUTOFF, {"seconds": older_than}
            ).scalar_one()
        return value

    def delete_batch(self, cutoff: dt.datetime, limit: int) -> int:
        params = {"cutoff": cutoff, "batch_size": limit}
        with autocommit(self.session_factory) as connection:
            return int(connection.execute(sql.PURGE_BATCH, params).scalar_one())

    def count(self, cutoff: dt.datetime) -> int:
        with autocommit(self.session_factory) as connection:
            return int(connection.execute(sql.PURGE_COUNT, {"cutoff": cutoff}).scalar_one())
