"""The outbox tables as the drain sees them: the Store protocol and the types it returns.

``Store.batch()`` is one transaction: lock the runs' cursors, read their next events, mark
them published or record why not, commit on leaving the block (roll back on an exception).
Its PostgreSQL implementation is ``tasks.pg.SqlStore``; the in-memory one is the tests'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Protocol

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


@dataclasses.dataclass(frozen=True)
class SinkHealth:
    """The shared record of the sink's health (``tasks.outages`` reads and writes it)."""

    down_since: dt.datetime | None = None
    last_error: str | None = None
    probes: int = 0
    probe_due: bool = False
