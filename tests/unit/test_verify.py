"""Verify and replay over the in-memory store and sink: the comparison rules, no services.

The ledger and the stream reader here are thin views of ``tests.fakes.InMemoryStore`` and
``tasks.sink.InMemorySink``; tests/integration/test_verify.py runs the same rules against
PostgreSQL and Redis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator, Sequence

import pytest

from models.errors import UnknownRun
from tasks import drain
from tasks.drain import Limits
from tasks.replay import check_from_seq, replay_run
from tasks.sink import Entry, InMemorySink, StreamEntry, StreamInfo, StreamItem
from tasks.verify import (
    Event,
    RunBusy,
    SeqRanges,
    verify_all,
    verify_one,
    verify_run,
)
from tests.fakes import InMemoryStore
from tests.unit.test_imports import loaded_after


class CountingSink(InMemorySink):
    """The in-memory sink, counting the entries each stream ever added (Redis's
    ``entries-added``), and able to lose a stream as a Redis without persistence does."""

    def __init__(self) -> None:
        super().__init__()
        self.added: dict[uuid.UUID, int] = {}

    def put(self, run_id: uuid.UUID, entry: StreamEntry) -> None:
        super().put(run_id, entry)
        self.added[run_id] = self.added.get(run_id, 0) + 1

    def lose(self, run_id: uuid.UUID) -> None:
        """Forget the run's stream entirely: entries, last id and count."""
        self.streams.pop(run_id, None)
        self.top.pop(run_id, None)
        self.added.pop(run_id, None)


class SinkReader:
    """The StreamReader over a CountingSink."""

    def __init__(self, sink: CountingSink) -> None:
        self.sink = sink

    def info(self, run_id: uuid.UUID) -> StreamInfo:
        if run_id not in self.sink.top:
            return StreamInfo()
        stream = self.sink.streams.get(run_id, {})
        return StreamInfo(
            length=len(stream),
            last_seq=self.sink.top[run_id],
            entries_added=self.sink.added.get(run_id, 0),
            first_seq=min(stream) if stream else None,
        )

    def read(
        self, run_id: uuid.UUID, after: tuple[int, int] | None, last: int | None, count: int
    ) -> list[StreamItem]:
        items = [
            StreamItem(e.seq, 0, e.type, e.payload, None if e.event_id is None else str(e.event_id))
            for e in self.sink.entries(run_id)
            if (after is None or (e.seq, 0) > after) and (last is None or e.seq <= last)
        ]
        return items[:count]


@dataclasses.dataclass
class StoreHeldRun:
    """A run of the InMemoryStore, as verify holds it."""

    store: InMemoryStore
    run_id: uuid.UUID
    next_seq: int

    def published(self, after: int, limit: int, max_bytes: int) -> list[Event]:
        found = [e for e in self._events() if after < e.seq < self.next_seq][:limit]
        page, size = [], 0
        for event in found:
            if page and size >= max_bytes:
                break
            page.append(event)
            size += len(event.type) + len(event.payload)
        return page

    def events_at(self, seqs: Sequence[int]) -> list[Event]:
        return [e for e in self._events() if e.seq in set(seqs)]

    def _events(self) -> list[Event]:
        events = self.store.runs[self.run_id].events
        return [Event(self.run_id, e.id, e.seq, e.type, e.payload) for e in events]


class StoreLedger:
    """The Ledger over an InMemoryStore; runs in ``store.busy`` stay locked."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.holds: list[tuple[uuid.UUID, bool]] = []

    @contextlib.contextmanager
    def hold(self, run_id: uuid.UUID, *, exclusive: bool = False) -> Iterator[StoreHeldRun]:
        if run_id not in self.store.runs:
            raise UnknownRun(f"no run with id {run_id}")
        if run_id in self.store.busy:
            raise RunBusy(f"run {run_id} stayed locked")
        self.holds.append((run_id, exclusive))
        yield StoreHeldRun(self.store, run_id, self.store.runs[run_id].next_seq)

    def runs(self, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
        return [r for r in sorted(self.store.runs) if after is None or r > after][:limit]

    def count_runs(self) -> int:
        return len(self.store.runs)


@dataclasses.dataclass
class World:
    """A store, a sink and the views verify and replay take of them."""

    store: InMemoryStore = dataclasses.field(default_factory=InMemoryStore)
    sink: CountingSink = dataclasses.field(default_factory=CountingSink)

    @property
    def ledger(self) -> StoreLedger:
        return StoreLedger(self.store)

    @property
    def reader(self) -> SinkReader:
        return SinkReader(self.sink)

    def published_runs(self, runs: int = 1, events: int = 5) -> list[uuid.UUID]:
        """Seed runs and drain them into the sink."""
        ids = self.store.seed(runs=runs, events=events)
        self.drain(ids)
        return ids

    def drain(self, run_ids: Sequence[uuid.UUID]) -> None:
        drain.drain_runs(self.store, self.sink, run_ids, Limits())

    def event(self, run_id: uuid.UUID, seq: int) -> Entry:
        [event] = [e for e in self.store.runs[run_id].events if e.seq == seq]
        return event

    def verify(self, run_id: uuid.UUID, **pages: int) -> str:
        return verify_run(self.ledger, self.reader, run_id, **pages).line()


def test_a_fully_published_run_matches() -> None:
    world = World()
    [run_id] = world.published_runs(events=5)

    report = verify_run(world.ledger, world.reader, run_id)

    assert (report.wrong, report.matched, report.events) == (False, 5, 5)
    assert report.line() == f"{run_id}: matches"
    summary = verify_one(world.ledger, world.reader, run_id)
    assert summary.line() == "verified 1 run and 5 published events: all match"


def test_entries_removed_from_the_stream_are_reported_missing_as_seq_ranges() -> None:
    world = World()
    [run_id] = world.published_runs(events=12)
    for seq in (3, 4, 5, 6, 7, 12):
        world.sink.remove(run_id, seq)

    report = verify_run(world.ledger, world.reader, run_id)

    assert report.line() == f"{run_id}: missing 3-7, 12"
    assert (report.wrong, report.matched, report.missing.count) == (True, 6, 6)


def test_a_lost_stream_that_new_entries_started_again_is_missing_its_front_not_trimmed() -> None:
    world = World()
    [run_id] = world.published_runs(events=4)
    world.sink.lose(run_id)  # a Redis without persistence restarted
    world.store.append(run_id, 2)
    world.drain([run_id])  # the drain goes on: the stream starts again at 5

    assert world.verify(run_id) == f"{run_id}: missing 1-4"


def test_a_stream_trimmed_from_its_front_is_not_wrong_and_says_below_which_seq() -> None:
    world = World()
    [run_id] = world.published_runs(events=6)
    for seq in (1, 2, 3):  # XTRIM keeps the newest entries
        world.sink.remove(run_id, seq)

    report = verify_run(world.ledger, world.reader, run_id)

    assert (report.wrong, report.trimmed, report.trimmed_below, report.matched) == (
        False,
        3,
        4,
        3,
    )
    assert report.line() == f"{run_id}: trimmed below 4"


def test_a_stream_trimmed_to_nothing_is_trimmed_below_its_last_id() -> None:
    world = World()
    [run_id] = world.published_runs(events=3)
    for seq in (1, 2, 3):
        world.sink.remove(run_id, seq)

    assert world.verify(run_id) == f"{run_id}: trimmed below 4"


def test_an_entry_that_is_not_its_event_is_reported_with_what_differs() -> None:
    world = World()
    [run_id] = world.published_runs(events=3)
    good = world.event(run_id, 2)
    world.sink.put(run_id, StreamEntry(2, good.type, '{"n": 99}', good.id))
    world.sink.put(run_id, StreamEntry(3, "other", '{"n": 3}', 12345))

    report = verify_run(world.ledger, world.reader, run_id)

    assert report.line() == f"{run_id}: differ 2-3 (first: 2-0 payload differs)"
    assert report.as_dict()["differ_seqs"] == "2-3"
    assert report.matched == 1


def test_an_entry_above_the_cursor_is_extra_unless_it_is_exactly_the_next_event() -> None:
    world = World()
    [run_id] = world.published_runs(events=2)
    world.store.append(run_id, 1)  # seq 3, not published yet
    third = world.event(run_id, 3)
    # A drain added it and crashed before its commit: the next drain counts it present.
    world.sink.put(run_id, StreamEntry(3, third.type, third.payload, third.id))
    world.sink.put(run_id, StreamEntry(7, "stray", "{}", None))  # nobody's event

    report = verify_run(world.ledger, world.reader, run_id)

    assert report.line() == f"{run_id}: extra 7; ahead of the cursor 3"
    assert (report.extra.count, report.ahead.count, report.wrong) == (1, 1, True)


def test_events_purged_from_the_database_are_not_compared_and_the_rest_still_are() -> None:
    world = World()
    [run_id] = world.published_runs(events=6)
    run = world.store.runs[run_id]
    run.events = [e for e in run.events if e.seq > 3]  # retention deleted seqs 1-3
    world.sink.remove(run_id, 5)

    report = verify_run(world.ledger, world.reader, run_id)

    assert (report.unchecked, report.matched) == (3, 2)
    assert report.line() == f"{run_id}: missing 5"


@pytest.mark.parametrize(("page_size", "run_page_size"), [(1, 1), (2, 3), (1000, 1000)])
def test_verify_all_pages_through_every_run_and_every_entry_alike(
    page_size: int, run_page_size: int
) -> None:
    world = World()
    runs = world.published_runs(runs=7, events=5)
    world.sink.remove(runs[1], 2)
    world.sink.lose(runs[4])
    world.sink.put(runs[6], StreamEntry(9, "stray", "{}", None))
    seen: list[uuid.UUID] = []

    summary = verify_all(
        world.ledger,
        world.reader,
        on_run=lambda report: seen.append(report.run_id),
        page_size=page_size,
        run_page_size=run_page_size,
    )

    assert seen == sorted(runs)
    assert [(r.run_id, r.line()) for r in summary.problems] == sorted(
        [
            (runs[1], f"{runs[1]}: missing 2"),
            (runs[4], f"{runs[4]}: missing 1-5"),
            (runs[6], f"{runs[6]}: extra 9"),
        ]
    )
    assert (summary.runs, summary.wrong_runs, summary.events) == (7, 3, 35)
    assert (summary.matched, summary.missing, summary.extra) == (29, 6, 1)
    assert summary.line() == (
        "verified 7 runs and 35 published events: 3 runs wrong (6 missing, 0 differ, 1 extra)"
    )


def test_a_page_of_large_events_is_cut_by_bytes_and_verify_still_sees_them_all() -> None:
    world = World()
    [run_id] = world.store.seed(events=0)
    world.store.append(run_id, 6, size=100)
    world.drain([run_id])
    world.sink.remove(run_id, 4)

    report = verify_run(world.ledger, world.reader, run_id, page_size=1000, max_bytes=150)

    assert (report.matched, report.line()) == (5, f"{run_id}: missing 4")


def test_a_locked_run_is_reported_as_not_checked_and_counts_as_wrong() -> None:
    world = World()
    [run_id] = world.published_runs(events=1)
    world.store.busy.add(run_id)

    summary = verify_one(world.ledger, world.reader, run_id)

    assert summary.wrong_runs == 1
    assert summary.problems[0].line() == f"{run_id}: not checked: run {run_id} stayed locked"


def test_verify_of_an_unknown_run_is_an_error() -> None:
    world = World()
    with pytest.raises(UnknownRun, match="no run with id"):
        verify_one(world.ledger, world.reader, uuid.uuid4())


def test_the_summary_lists_a_bounded_number_of_wrong_runs_and_counts_the_rest() -> None:
    world = World()
    runs = world.published_runs(runs=4, events=1)
    for run_id in runs:
        world.sink.lose(run_id)

    summary = verify_all(world.ledger, world.reader, max_problems=2)

    result = summary.as_dict()
    assert (result["status"], result["wrong_runs"], result["missing"]) == ("wrong", 4, 4)
    assert (len(result["problems"]), result["problems_left_off"]) == (2, 2)


def test_seq_ranges_name_a_bounded_number_of_ranges_and_the_count() -> None:
    ranges = SeqRanges(limit=2)
    for seq in (1, 2, 3, 5, 9, 10):
        ranges.add(seq)

    assert (str(ranges), ranges.count) == ("1-3, 5, ... (6 in all)", 6)


def test_replay_restores_a_lost_stream_exactly_once() -> None:
    world = World()
    [run_id] = world.published_runs(events=5)
    before = world.sink.entries(run_id)
    world.sink.lose(run_id)

    first = replay_run(world.ledger, world.reader, world.sink, run_id, page_size=2)
    again = replay_run(world.ledger, world.reader, world.sink, run_id, page_size=2)

    assert (first.added, first.already_present, first.complete) == (5, 0, True)
    assert (again.added, again.already_present, again.complete) == (0, 5, True)
    assert world.sink.entries(run_id) == before
    assert world.verify(run_id) == f"{run_id}: matches"


def test_replay_holds_the_run_alone_and_starts_at_from_seq() -> None:
    world = World()
    [run_id] = world.published_runs(events=5)
    world.sink.lose(run_id)
    ledger = world.ledger

    result = replay_run(ledger, world.reader, world.sink, run_id, from_seq=4)

    assert ledger.holds == [(run_id, True)]
    assert (result.added, [e.seq for e in world.sink.entries(run_id)]) == (2, [4, 5])


def test_replay_reports_entries_below_the_streams_last_id_it_cannot_put_back() -> None:
    world = World()
    [run_id] = world.published_runs(events=6)
    for seq in (2, 3, 6):
        world.sink.remove(run_id, seq)  # XDEL: the stream's last id stays 6

    result = replay_run(world.ledger, world.reader, world.sink, run_id)

    assert (result.added, result.already_present, result.complete) == (0, 3, False)
    assert str(result.not_restored) == "2-3, 6"
    assert result.problem() == (
        f"could not restore seqs 2-3, 6 of run {run_id}: they are at or below the stream's last id "
        "6-0, and Redis adds entries only above it. Rebuild the stream with `outbox replay "
        f"{run_id} --rebuild`, which deletes it and writes it anew (its consumers then read it "
        "again from the start)"
    )


def test_replay_stops_at_an_entry_that_holds_another_event() -> None:
    world = World()
    [run_id] = world.published_runs(events=4)
    world.sink.lose(run_id)
    world.sink.put(run_id, StreamEntry(2, "old.run", "{}", 1))  # a run id used before

    result = replay_run(world.ledger, world.reader, world.sink, run_id)

    assert (result.complete, result.added, result.already_present) == (False, 0, 0)
    assert result.conflict is not None
    assert result.conflict.startswith("entry 2-0 holds another event (type, payload, event id")
    assert [e.seq for e in world.sink.entries(run_id)] == [2]


def test_replay_leaves_a_trimmed_front_alone() -> None:
    world = World()
    [run_id] = world.published_runs(events=5)
    for seq in (1, 2):
        world.sink.remove(run_id, seq)

    result = replay_run(world.ledger, world.reader, world.sink, run_id)

    assert (result.complete, result.trimmed_below, result.already_present) == (True, 3, 3)
    assert result.line() == (
        f"{run_id}: added 0, 3 already present; below 3 trimmed by consumers, left alone"
    )


def test_replay_reports_a_refusal_of_the_sink() -> None:
    world = World()
    [run_id] = world.published_runs(events=2)
    world.sink.lose(run_id)
    world.sink.refuse(run_id, "WRONGTYPE not a stream")

    result = replay_run(world.ledger, world.reader, world.sink, run_id)

    assert (result.complete, result.refused) == (False, "WRONGTYPE not a stream (entry 1-0)")


@pytest.mark.parametrize("value", [0, -1, "1", 1.0, True, None])
def test_replay_refuses_a_first_seq_that_is_not_a_positive_integer(value: object) -> None:
    with pytest.raises(ValueError, match="from_seq must be an integer of at least 1"):
        check_from_seq(value)


@pytest.mark.parametrize("statement", ["import tasks.verify", "import tasks.replay"])
def test_verify_and_replay_load_neither_celery_nor_redis(statement: str) -> None:
    assert loaded_after(statement) & {"celery", "kombu", "redis"} == set()
