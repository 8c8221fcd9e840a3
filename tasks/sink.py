"""What a sink must do, and an in-memory sink that does exactly that (for tests and examples).

The rules, which ``tests/contract/test_sink.py`` checks against every sink:

* Entries arrive grouped by run and in seq order within a run; the entry of event ``seq`` has
  the id ``<seq>-0`` in the run's stream.
* Re-publishing is idempotent: an entry the stream already holds for this very event is
  counted as ``present`` and never added twice.
* An id that is taken by an entry that is *not* this event is a conflict, never "already
  published" (a run deleted and created again with the same id finds its old stream). So is
  an id at or below the stream's top whose entry is gone, unless a later entry of this run
  shows that the entry was this run's and a consumer trimmed it.
* The first entry of a run that fails stops that run's batch: no later entry of the run is
  added, so the stream never has a gap that a retry could not fill.
* An answer about the run's own entries (the key holds another type, say) is a refusal of
  that run; an answer about the sink as a whole (unreachable, out of memory, read-only,
  loading) raises SinkUnavailable and publishes nothing that is reported as published.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Protocol

from tasks.errors import SinkUnavailable


class Entry(Protocol):
    """One event as the sink sees it (the drain passes its result rows as they are)."""

    @property
    def run_id(self) -> uuid.UUID: ...
    @property
    def id(self) -> int:  # the event's primary key: tells two events with one seq apart
        ...
    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def payload(self) -> str:  # JSON text
        ...


@dataclasses.dataclass(frozen=True)
class StreamEntry:
    """An entry of a run's stream, as a consumer reads it."""

    seq: int
    type: str
    payload: str
    event_id: int | None = None  # absent from entries written before the field existed


@dataclasses.dataclass(frozen=True)
class PublishOutcome:
    """What a publish did, per run.

    Every run whose whole batch the sink now holds is a key of both ``added`` (entries it
    added) and ``present`` (entries it held already). The other runs are ``refused`` or in
    ``conflicts``, with a message.
    """

    added: dict[uuid.UUID, int] = dataclasses.field(default_factory=dict)
    present: dict[uuid.UUID, int] = dataclasses.field(default_factory=dict)
    refused: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)
    conflicts: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)


# Reading a run's stream back, for verify and replay (the Redis sink's RedisStreamReader).


@dataclasses.dataclass(frozen=True)
class StreamItem:
    """An entry of a run's stream as verify reads it: the two parts of its id, its fields."""

    seq: int  # the id's first part: the event's seq, for the ids the publisher writes
    sub: int  # the id's second part: 0 in every id the publisher writes
    type: str | None  # None when the entry has no such field
    payload: str | None
    event: str | None  # the event id as text; None in entries written before it existed


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """What a stream says of itself (Redis: ``XINFO STREAM``); all zero for no stream."""

    length: int = 0
    last_seq: int = 0  # the first part of the stream's last id: Redis adds only above it
    entries_added: int | None = 0  # entries ever added; None if the server does not say
    first_seq: int | None = None  # the first entry's seq; None when the stream is empty

    @property
    def trimmed_below(self) -> int:
        """Seqs below this were in the stream and were removed from its front (1: none).

        The publisher adds each seq once, as ``<seq>-0``, so a stream written from seq 1 has
        added exactly as many entries as its last seq. When it has, every absent seq up to
        the last one was added and later removed: those below the first entry by XTRIM (or
        XDEL of the oldest entries). A stream that was lost and started again (a Redis
        restart without persistence, a deleted key) has added fewer: its front was never
        there, and is reported missing.
        """
        if self.last_seq == 0 or self.entries_added is None:
            return 1
        if self.entries_added < self.last_seq:
            return 1
        return self.first_seq if self.first_seq is not None else self.last_seq + 1


class StreamReader(Protocol):
    """Reads a run's stream back."""

    def info(self, run_id: uuid.UUID) -> StreamInfo:
        """What the run's stream says of itself (``StreamInfo()`` when there is none).

        Raises StreamUnreadable when the key holds something else, SinkUnavailable when the
        sink cannot be reached.
        """
        ...

    def read(
        self, run_id: uuid.UUID, after: tuple[int, int] | None, last: int | None, count: int
    ) -> list[StreamItem]:
        """Up to ``count`` entries in id order: above the id ``after`` (from the first when
        None) and with seq at most ``last`` (to the end when None)."""
        ...


class Sink(Protocol):
    """A sink that takes batches of entries, grouped by run and in seq order within a run."""

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        """Publish ``entries`` by the rules in this module's docstring.

        Raises
        ------
        SinkUnavailable
            The sink as a whole cannot take entries now; retry later. Nothing is counted
            against the runs.
        """
        ...


def conflict_message(run_id: uuid.UUID, seq: int, *, gone: bool) -> str:
    """The error a run is parked with when its entry id ``<seq>-0`` is not this event's."""
    what = (
        "is gone from the run's stream (trimmed or deleted) and no later entry shows it was "
        "this run's event"
        if gone
        else "holds another event (was a run with this id deleted and created again?)"
    )
    return (
        f"CONFLICT entry {seq}-0 {what}; nothing was marked published. Move or delete the "
        f"stream, then run `outbox resume {run_id}`"
    )


class InMemorySink:
    """A sink that keeps each run's stream in a dict, with the Redis sink's rules.

    Faults for tests: ``refuse(run_id, message)`` makes the run's entries fail from the next
    publish on, ``unavailable = "..."`` makes every publish raise SinkUnavailable, and
    ``put``/``remove`` write or delete entries behind the publisher's back.
    """

    def __init__(self) -> None:
        self.streams: dict[uuid.UUID, dict[int, StreamEntry]] = {}
        self.top: dict[uuid.UUID, int] = {}  # like a stream's last id: kept after deletes
        self.refusals: dict[uuid.UUID, str] = {}
        self.unavailable: str | None = None

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        if self.unavailable is not None:
            raise SinkUnavailable(self.unavailable)
        outcome = PublishOutcome()
        stopped: set[uuid.UUID] = set()
        for entry in entries:
            run_id = entry.run_id
            if run_id in stopped:
                continue
            outcome.added.setdefault(run_id, 0)
            outcome.present.setdefault(run_id, 0)
            if run_id in self.refusals:
                failure = outcome.refused
                failure[run_id] = f"{self.refusals[run_id]} (entry {entry.seq}-0)"
            elif entry.seq > self.top.get(run_id, 0):
                self.put(run_id, StreamEntry(entry.seq, entry.type, entry.payload, entry.id))
                outcome.added[run_id] += 1
                continue
            elif self._holds(entry):
                outcome.present[run_id] += 1
                continue
            else:
                gone = entry.seq not in self.streams.get(run_id, {})
                failure = outcome.conflicts
                failure[run_id] = conflict_message(run_id, entry.seq, gone=gone)
            stopped.add(run_id)
            del outcome.added[run_id], outcome.present[run_id]
        return outcome

    def _holds(self, entry: Entry) -> bool:
        stream = self.streams.get(entry.run_id, {})
        found = stream.get(entry.seq)
        if found is not None:
            return (found.event_id in (None, entry.id)) and (found.type, found.payload) == (
                entry.type,
                entry.payload,
            )
        later = [e for seq, e in stream.items() if seq > entry.seq]
        first = min(later, key=lambda e: e.seq) if later else None
        return first is not None and first.event_id is not None and first.event_id > entry.id

    def put(self, run_id: uuid.UUID, entry: StreamEntry) -> None:
        """Write ``entry`` into the run's stream (as the sink or another writer would)."""
        self.streams.setdefault(run_id, {})[entry.seq] = entry
        self.top[run_id] = max(self.top.get(run_id, 0), entry.seq)

    def remove(self, run_id: uuid.UUID, seq: int) -> None:
        """Delete one entry, as a consumer's XDEL or XTRIM would; the stream's top stays."""
        self.streams.get(run_id, {}).pop(seq, None)

    def refuse(self, run_id: uuid.UUID, message: str) -> None:
        """Make every publish of ``run_id`` fail with ``message`` until ``accept``."""
        self.refusals[run_id] = message

    def accept(self, run_id: uuid.UUID) -> None:
        """Stop refusing ``run_id``."""
        self.refusals.pop(run_id, None)

    def entries(self, run_id: uuid.UUID) -> list[StreamEntry]:
        """The run's stream, in seq order."""
        return [entry for _, entry in sorted(self.streams.get(run_id, {}).items())]
