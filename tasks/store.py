"""The outbox tables as the drain sees them: a Store protocol and its SQL implementation.

``Store.batch()`` is one transaction: lock the runs' cursors, read their next events, mark
them published or record why not, commit on leaving the block (roll back on an exception).
The SQL lives in ``tasks.sql``; connection failures become StoreUnavailable here, so the layers
above never see a driver's error type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from tasks import pg, sql
from tasks.pg import SessionFactory
from tasks.sink import Entry


class Row(Entry, Protocol):
    """An event read for a batch, plus how many of the run's events the read fetched."""

    @property
    def fetched(self) -> int:  # the run's rows before the byte cut: a cut means more wait
        ...


@dataclasses.dataclass(frozen=True)
class Cursor:
    """A run this batch holds: where its drain stands."""

    run_id: uuid.UUID
    next_seq: int
    stalled: bool = False
    attempts: int = 0


@dataclasses.dataclass(frozen=True)
class Locked:
    """What locking a set of runs found."""

    held: dict[uuid.UUID, Cursor]  # runs this batch now holds
    busy: set[uuid.UUID]  # runs that exist but another transaction holds (or is deleting)
    # every other run asked for does not exist


class Batch(Protocol):
    """One drain transaction."""

    def lock(self, run_ids: Sequence[uuid.UUID]) -> Locked:
        """Lock the runs' cursors, skipping runs another transaction holds."""
        ...

    def read(self, cursors: Mapping[uuid.UUID, int], per_run: int, max_bytes: int) -> list[Row]:
        """Each run's next events in seq order, ``per_run`` and ``max_bytes`` at most."""
        ...

    def mark_published(self, event_ids: Sequence[int], next_seqs: Mapping[uuid.UUID, int]) -> None:
        """Mark the events published and move the runs' cursors (rows gone meanwhile: no-op)."""
        ...

    def record_refusals(
        self, errors: Mapping[uuid.UUID, str], delays: Mapping[uuid.UUID, float], max_attempts: int
    ) -> set[uuid.UUID]:
        """Count an attempt against each run and delay its retry; return the runs it parked."""
        ...

    def park(self, errors: Mapping[uuid.UUID, str]) -> None:
        """Park the runs at once, with their errors."""
        ...


class Store(Protocol):
    """The drain's view of the outbox tables."""

    def batch(self) -> contextlib.AbstractContextManager[Batch]:
        """Begin one drain transaction; it commits when the block ends without an exception."""
        ...

    def record_outage(self, run_ids: Sequence[uuid.UUID], error: str) -> None:
        """Note the sink's outage on the runs, without counting it against them."""
        ...

    def runs_with_more(self, next_seqs: Mapping[uuid.UUID, int]) -> set[uuid.UUID]:
        """The runs with events at or after the given cursors (a lock-free look)."""
        ...

    def find_pending(
        self, limit: int, after: uuid.UUID | None = None, *, due_only: bool = True
    ) -> list[uuid.UUID]:
        """Up to ``limit`` active runs with pending events, in run id order, after ``after``.

        With ``due_only``, runs still waiting out a retry delay are left out.
        """
        ...

    def resume(self, run_ids: Sequence[uuid.UUID] | None) -> list[uuid.UUID]:
        """Un-park runs (all parked ones when None); return those resumed."""
        ...


MAX_ERROR_CHARS = 2000  # what a run's last_error keeps of a message


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


@dataclasses.dataclass(frozen=True)
class SinkHealth:
    """The shared record of the sink's health (``tasks.outages`` reads and writes it)."""

    down_since: dt.datetime | None = None
    last_error: str | None = None
    probes: int = 0
    probe_due: bool = False


class SqlStore:
    """The Store (and the sink's health record) over a SQLAlchemy session factory."""

    def __init__(self, session_factory: SessionFactory) -> None:
        self.session_factory = session_factory

    @contextlib.contextmanager
    def batch(self) -> Iterator[SqlBatch]:
        with pg.transaction(self.session_factory) as session:
            yield SqlBatch(session)

    def _transaction(self) -> contextlib.AbstractContextManager[Session]:
        return pg.transaction(self.session_factory)

    def _autocommit(self) -> contextlib.AbstractContextManager[Connection]:
        return pg.autocommit(self.session_factory)

    def record_outage(self, run_ids: Sequence[uuid.UUID], error: str) -> None:
        if run_ids:
            params = {"run_ids": list(run_ids), "error": error[:MAX_ERROR_CHARS]}
            with self._autocommit() as connection:
                connection.execute(sql.RECORD_OUTAGE, params)

    def runs_with_more(self, next_seqs: Mapping[uuid.UUID, int]) -> set[uuid.UUID]:
        if not next_seqs:
            return set()
        params = {"run_ids": list(next_seqs), "next_seqs": list(next_seqs.values())}
        with self._autocommit() as connection:
            return set(connection.execute(sql.RUNS_WITH_MORE, params).scalars())

    def find_pending(
        self, limit: int, after: uuid.UUID | None = None, *, due_only: bool = True
    ) -> list[uuid.UUID]:
        query = sql.find_pending(after=after is not None, due_only=due_only)
        with self._autocommit() as connection:
            return list(connection.execute(query, {"limit": limit, "after": after}).scalars())

    def resume(self, run_ids: Sequence[uuid.UUID] | None) -> list[uuid.UUID]:
        with self._transaction() as session:
            if run_ids is None:
                return list(session.execute(sql.RESUME_ALL).scalars())
            return list(session.execute(sql.RESUME, {"run_ids": list(run_ids)}).scalars())

    # The sink's health record (tasks.outages.SinkGate).

    def sink_health(self) -> SinkHealth:
        with self._autocommit() as connection:
            row = connection.execute(sql.SINK_HEALTH).one_or_none()
        if row is None:
            return SinkHealth()
        return SinkHealth(row.down_since, row.last_error, row.probes, bool(row.probe_due))

    def sink_down(self, error: str, first_check_in: float) -> bool:
        params = {"error": error[:MAX_ERROR_CHARS], "delay": first_check_in}
        with self._autocommit() as connection:
            return connection.execute(sql.SINK_DOWN, params).first() is not None

    def claim_probe(self, probes: int, next_check_in: float) -> bool:
        params = {"probes": probes, "delay": next_check_in}
        with self._autocommit() as connection:
            return connection.execute(sql.CLAIM_PROBE, params).first() is not None

    def sink_still_down(self, error: str) -> None:
        with self._autocommit() as connection:
            connection.execute(sql.SINK_STILL_DOWN, {"error": error[:MAX_ERROR_CHARS]})

    def sink_up(self) -> float | None:
        with self._autocommit() as connection:
            row = connection.execute(sql.SINK_UP).first()
        return None if row is None else float(row.seconds)
