"""The drain core over the in-memory store and sink: no services, the same rules."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from tasks import drain
from tasks.drain import Fault, Limits, Status
from tasks.sink import Entry, InMemorySink, PublishOutcome, StreamEntry
from tests.fakes import InMemoryStore

LIMITS = Limits(max_attempts=3)


def seqs(sink: InMemorySink, run_id: uuid.UUID) -> list[int]:
    return [entry.seq for entry in sink.entries(run_id)]


def test_a_drain_publishes_every_event_once_in_seq_order_and_moves_the_cursor() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    [run_id] = store.seed(events=5)

    [result] = drain.drain_runs(store, sink, [run_id], LIMITS)

    assert (result.status, result.published, result.already_present) == (Status.DRAINED, 5, 0)
    assert seqs(sink, run_id) == [1, 2, 3, 4, 5]
    assert sink.entries(run_id)[0] == StreamEntry(1, "t", '{"n": 1}', event_id=1)
    assert (store.runs[run_id].next_seq, store.pending(run_id)) == (6, [])


def test_the_batch_budget_is_shared_by_the_runs_and_a_limit_hit_reports_more() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    first, second = store.seed(runs=2, events=5)
    small = dataclasses.replace(LIMITS, batch_size=4, max_batches=1)  # 2 events per run

    results = drain.drain_runs(store, sink, [first, second], small)

    assert [(r.status, r.published) for r in results] == [(Status.MORE, 2), (Status.MORE, 2)]
    assert store.pending(first) == [3, 4, 5]
    again = drain.drain_runs(store, sink, [first, second], LIMITS)
    assert [(r.status, r.published) for r in again] == [(Status.DRAINED, 3), (Status.DRAINED, 3)]
    assert seqs(sink, first) == seqs(sink, second) == [1, 2, 3, 4, 5]


def test_the_byte_cap_counts_type_and_payload_and_always_moves_one_event() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    [run_id] = store.seed(events=0)
    store.append(run_id, 3, type="x" * 255)  # the type alone is over the cap below
    tight = dataclasses.replace(LIMITS, batch_max_bytes=200, max_batches=1)

    [first] = drain.drain_runs(store, sink, [run_id], tight)

    assert (first.status, first.published) == (Status.MORE, 1)
    drain.drain_runs(store, sink, [run_id], dataclasses.replace(tight, max_batches=5))
    assert seqs(sink, run_id) == [1, 2, 3]


def test_a_repeat_after_a_crash_reports_what_the_sink_held_as_already_present() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    [run_id] = store.seed(events=4)
    for event in store.runs[run_id].events[:3]:  # published, then the drain died before commit
        sink.put(run_id, StreamEntry(event.seq, event.type, event.payload, event.id))

    [result] = drain.drain_runs(store, sink, [run_id], LIMITS)

    assert (result.status, result.published, result.already_present) == (Status.DRAINED, 1, 3)
    assert seqs(sink, run_id) == [1, 2, 3, 4]
    assert store.pending(run_id) == []


def test_a_refused_run_counts_an_attempt_waits_its_delay_and_the_others_commit() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    bad, good = store.seed(runs=2, events=2)
    sink.refuse(bad, "WRONGTYPE Operation against a key holding the wrong kind of value")

    results = drain.drain_runs(store, sink, [bad, good], LIMITS)

    assert [(r.status, r.fault) for r in results] == [
        (Status.MORE, Fault.REFUSED),
        (Status.DRAINED, None),
    ]
    assert results[0].error is not None
    assert results[0].error.startswith("WRONGTYPE")
    assert seqs(sink, good) == [1, 2]
    run = store.runs[bad]
    assert (run.attempts, run.next_seq, run.status) == (1, 1, "active")
    assert run.retry_at is not None
    assert store.clock() <= run.retry_at <= store.clock() + 1  # attempt 1 waits up to 1 s
    assert store.find_pending(10) == []  # dispatch leaves it until then
    assert store.find_pending(10, due_only=False) == [bad]  # an operator's drain does not


def test_a_run_refused_max_attempts_times_is_parked_and_resume_restarts_it() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    [run_id] = store.seed(events=2)
    sink.refuse(run_id, "WRONGTYPE ...")

    statuses = [drain.drain_runs(store, sink, [run_id], LIMITS)[0].status for _ in range(3)]

    assert statuses == [Status.MORE, Status.MORE, Status.STALLED]
    assert store.runs[run_id].status == "stalled"
    assert drain.drain_runs(store, sink, [run_id], LIMITS)[0].status == Status.STALLED
    sink.accept(run_id)
    assert store.resume([run_id]) == [run_id]
    [result] = drain.drain_runs(store, sink, [run_id], LIMITS)
    assert (result.status, result.published) == (Status.DRAINED, 2)


def test_an_entry_id_held_by_another_event_parks_the_run_at_once_and_marks_nothing() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    reused, other = store.seed(runs=2, events=2)
    # The stream of an earlier run with the same id: entries 1-0 and 2-0 are someone else's.
    sink.put(reused, StreamEntry(1, "old", '{"old": 1}', event_id=900))
    sink.put(reused, StreamEntry(2, "old", '{"old": 2}', event_id=901))

    results = drain.drain_runs(store, sink, [reused, other], LIMITS)

    assert [(r.status, r.fault) for r in results] == [
        (Status.STALLED, Fault.CONFLICT),
        (Status.DRAINED, None),
    ]
    assert "CONFLICT entry 1-0 holds another event" in (results[0].error or "")
    assert f"outbox resume {reused}" in (results[0].error or "")
    assert (store.runs[reused].status, store.pending(reused)) == ("stalled", [1, 2])
    assert [e.type for e in sink.entries(reused)] == ["old", "old"]


def test_an_entry_trimmed_by_a_consumer_counts_as_present_when_a_later_one_is_this_runs() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    [run_id] = store.seed(events=3)
    for event in store.runs[run_id].events:  # all published, then the commit was lost
        sink.put(run_id, StreamEntry(event.seq, event.type, event.payload, event.id))
    sink.remove(run_id, 1)  # and a consumer trimmed the first

    [result] = drain.drain_runs(store, sink, [run_id], LIMITS)

    assert (result.status, result.published, result.already_present) == (Status.DRAINED, 0, 3)


def test_an_entry_gone_with_nothing_later_to_vouch_for_it_is_a_conflict() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    [run_id] = store.seed(events=1)
    sink.put(run_id, StreamEntry(5, "old", "{}", event_id=7))
    sink.remove(run_id, 5)  # the stream's top is 5-0 and nothing is left

    [result] = drain.drain_runs(store, sink, [run_id], LIMITS)

    assert (result.status, result.fault) == (Status.STALLED, Fault.CONFLICT)
    assert "is gone from the run's stream" in (result.error or "")


def test_a_sink_outage_rolls_back_notes_the_error_and_counts_nothing() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    first, second = store.seed(runs=2, events=2)
    sink.unavailable = "OOM command not allowed when used memory > 'maxmemory'."

    results = drain.drain_runs(store, sink, [first, second], LIMITS)

    assert [(r.status, r.fault) for r in results] == [(Status.MORE, Fault.OUTAGE)] * 2
    for run_id in (first, second):
        run = store.runs[run_id]
        assert (run.attempts, run.next_seq, run.status, run.retry_at) == (0, 1, "active", None)
        assert run.last_error is not None
        assert run.last_error.startswith("OOM")
    sink.unavailable = None
    results = drain.drain_runs(store, sink, [first, second], LIMITS)
    assert [(r.status, r.published) for r in results] == [(Status.DRAINED, 2)] * 2


def test_locked_missing_and_stalled_runs_are_reported_and_left_alone() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    held, parked = store.seed(runs=2, events=1)
    store.busy.add(held)
    store.runs[parked].status = "stalled"
    ghost = uuid.uuid4()

    results = drain.drain_runs(store, sink, [held, parked, ghost], LIMITS)

    assert [r.status for r in results] == [Status.LOCKED, Status.STALLED, Status.MISSING]
    assert sink.streams == {}


def test_an_outage_in_a_group_leaves_the_locked_missing_and_stalled_runs_reported_as_such() -> None:
    # Found by the state machine: the outage of one run's publish used to be reported for
    # every run of the group, a run that does not exist included.
    store, sink = InMemoryStore(), InMemorySink()
    pending, held, parked = store.seed(runs=3, events=1)
    store.busy.add(held)
    store.runs[parked].status = "stalled"
    ghost = uuid.uuid4()
    sink.unavailable = "Redis unavailable: ConnectionError"

    results = drain.drain_runs(store, sink, [pending, held, parked, ghost], LIMITS)

    assert [(r.status, r.fault) for r in results] == [
        (Status.MORE, Fault.OUTAGE),
        (Status.LOCKED, None),
        (Status.STALLED, None),
        (Status.MISSING, None),
    ]
    assert [store.runs[r].last_error for r in (held, parked)] == [None, None]


class CommitsWhilePublishing(InMemorySink):
    """A producer commits to the run while its drain holds it (its kick found it locked)."""

    def __init__(self, store: InMemoryStore, run_id: uuid.UUID) -> None:
        super().__init__()
        self.store, self.run_id = store, run_id

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        if len(self.store.runs[self.run_id].events) < 3:
            self.store.append(self.run_id)
        return super().publish(entries)


def test_a_commit_during_the_drain_is_seen_by_the_second_look_unless_told_not_to() -> None:
    store = InMemoryStore()
    [run_id] = store.seed(events=1)

    [looked] = drain.drain_runs(store, CommitsWhilePublishing(store, run_id), [run_id], LIMITS)
    assert (looked.status, looked.published) == (Status.DRAINED, 3)

    store2 = InMemoryStore()
    [run2] = store2.seed(events=1)
    sink2 = CommitsWhilePublishing(store2, run2)
    [no_look] = drain.drain_runs(store2, sink2, [run2], LIMITS, check_again=False)
    assert (no_look.status, no_look.published) == (Status.DRAINED, 1)
    assert store2.pending(run2) == [2]


def test_a_pass_drains_every_active_run_including_those_waiting_out_a_retry_delay() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    runs = store.seed(runs=5, events=2)
    store.runs[runs[0]].retry_at = store.clock() + 60
    small = dataclasses.replace(LIMITS, group_size=2)

    result = drain.drain_pass(store, sink, small)

    assert result.as_dict() == {
        "status": "drained",
        "published": 10,
        "already_present": 0,
        "runs": 5,
        "failed": 0,
    }


def test_a_pass_stops_at_an_outage_and_reports_more() -> None:
    store, sink = InMemoryStore(), InMemorySink()
    store.seed(runs=3, events=1)
    sink.unavailable = "Redis unavailable: ConnectionError"

    result = drain.drain_pass(store, sink, dataclasses.replace(LIMITS, group_size=1))

    assert (result.status, result.published, result.failed) == (Status.MORE, 0, 1)
    assert result.outage == "Redis unavailable: ConnectionError"
