"""What every store must do (the ``Store`` and ``Batch`` protocols of ``tasks.store``), run
against the in-memory store the unit layer drains and the SQL store on PostgreSQL.

The in-memory store stands in for the SQL one in every unit test of the drain, the jobs and
the state machine, so it must keep the SQL store's rules; this suite is where they are written
down once, for both (it found the in-memory store resuming runs that were not stalled).
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.stores import Kit, MemoryKit, SqlKit, State


@pytest.fixture(params=["memory", pytest.param("sql", marks=pytest.mark.services)])
def kit(request: pytest.FixtureRequest) -> Kit:
    if request.param == "memory":
        return MemoryKit()
    return SqlKit(request.getfixturevalue("Session"))


# Locking.


def test_lock_holds_free_runs_and_tells_busy_ones_from_missing_ones(kit: Kit) -> None:
    free, busy, gone = kit.create(1), kit.create(1), kit.create(1)
    kit.delete(gone)
    ghost = uuid.uuid4()
    with kit.hold(busy), kit.store.batch() as batch:
        locked = batch.lock([free, busy, gone, ghost])
    assert set(locked.held) == {free}
    assert locked.busy == {busy}
    cursor = locked.held[free]
    assert (cursor.next_seq, cursor.stalled, cursor.attempts) == (1, False, 0)


def test_a_parked_run_is_held_with_its_cursor_marked_stalled(kit: Kit) -> None:
    run_id = kit.create(1)
    with kit.store.batch() as batch:
        batch.park({run_id: "CONFLICT entry 1-0"})
    with kit.store.batch() as batch:
        assert batch.lock([run_id]).held[run_id].stalled


# Reading.


def test_read_returns_each_runs_events_from_its_cursor_in_seq_order_up_to_per_run(
    kit: Kit,
) -> None:
    first, second = kit.create(5), kit.create(2)
    with kit.store.batch() as batch:
        rows = batch.read({first: 2, second: 1}, 3, 1 << 20)
    assert [(r.run_id, r.seq) for r in rows if r.run_id == first] == [(first, s) for s in (2, 3, 4)]
    assert [r.seq for r in rows if r.run_id == second] == [1, 2]
    assert {r.fetched for r in rows if r.run_id == first} == {3}
    for row in rows:
        assert json.loads(row.payload) == {"n": row.seq}
        assert row.type == "t"


def test_the_byte_cap_cuts_a_runs_batch_but_always_lets_its_first_event_through(kit: Kit) -> None:
    run_id = kit.create(4, pad=1000)
    with kit.store.batch() as batch:
        one = batch.read({run_id: 1}, 10, 10)
        two = batch.read({run_id: 1}, 10, 1500)
    assert [r.seq for r in one] == [1]
    assert [r.seq for r in two] == [1, 2]
    assert {r.fetched for r in two} == {4}  # fetched counts the rows before the cut


# Recording.


def test_mark_published_moves_the_cursor_and_clears_attempts_and_errors(kit: Kit) -> None:
    run_id = kit.create(3)
    with kit.store.batch() as batch:
        batch.record_refusals({run_id: "WRONGTYPE"}, {run_id: 0.0}, 5)
    with kit.store.batch() as batch:
        rows = batch.read({run_id: 1}, 2, 1 << 20)
        batch.mark_published([r.id for r in rows], {run_id: 3})
    assert kit.state(run_id) == State(3, "active", 0, None, frozenset({1, 2}))


def test_mark_published_of_a_run_deleted_meanwhile_changes_nothing_and_raises_nothing(
    kit: Kit,
) -> None:
    run_id, other = kit.create(1), kit.create(1)
    with kit.store.batch() as batch:
        rows = batch.read({run_id: 1}, 1, 1 << 20)
    kit.delete(run_id)
    with kit.store.batch() as batch:
        batch.mark_published([r.id for r in rows], {run_id: 2})
    assert kit.state(other).next_seq == 1


def test_refusals_count_attempts_and_park_the_run_at_max_attempts(kit: Kit) -> None:
    run_id = kit.create(1)
    for attempt in (1, 2):
        with kit.store.batch() as batch:
            parked = batch.record_refusals({run_id: f"no {attempt}"}, {run_id: 0.0}, 2)
        assert parked == (set() if attempt == 1 else {run_id})
        assert kit.state(run_id).attempts == attempt
        assert kit.state(run_id).last_error == f"no {attempt}"
    assert kit.state(run_id).status == "stalled"


def test_a_batch_that_raises_rolls_back_what_it_recorded(kit: Kit) -> None:
    run_id = kit.create(2)

    def publish_then_die() -> None:
        with kit.store.batch() as batch:
            rows = batch.read({run_id: 1}, 2, 1 << 20)
            batch.mark_published([r.id for r in rows], {run_id: 3})
            raise RuntimeError("the drainer died before the commit")

    with pytest.raises(RuntimeError):
        publish_then_die()
    assert kit.state(run_id) == State(1, "active", 0, None, frozenset())


def test_an_outage_is_noted_on_the_runs_without_counting_against_them(kit: Kit) -> None:
    run_id = kit.create(1)
    kit.store.record_outage([run_id], "Redis unavailable")
    assert kit.state(run_id) == State(1, "active", 0, "Redis unavailable", frozenset())


# Looking without locks.


def test_runs_with_more_are_those_with_events_at_or_after_the_cursor(kit: Kit) -> None:
    done, more, ghost = kit.create(2), kit.create(2), uuid.uuid4()
    assert kit.store.runs_with_more({done: 3, more: 2, ghost: 1}) == {more}


def test_find_pending_lists_active_runs_with_unpublished_events_in_id_order(kit: Kit) -> None:
    empty, parked = kit.create(0), kit.create(1)
    pending = sorted([kit.create(1), kit.create(2), kit.create(1)])
    with kit.store.batch() as batch:
        batch.park({parked: "CONFLICT"})
    assert empty not in kit.store.find_pending(10)
    assert kit.store.find_pending(10) == pending
    assert kit.store.find_pending(2) == pending[:2]
    assert kit.store.find_pending(10, after=pending[0]) == pending[1:]


def test_find_pending_leaves_runs_waiting_out_a_retry_delay_to_due_only(kit: Kit) -> None:
    waiting, due = kit.create(1), kit.create(1)
    with kit.store.batch() as batch:
        batch.record_refusals({waiting: "no"}, {waiting: 3600.0}, 5)
    assert kit.store.find_pending(10) == [due]
    assert kit.store.find_pending(10, due_only=False) == sorted([waiting, due])


def test_a_run_whose_events_are_all_published_is_not_pending(kit: Kit) -> None:
    run_id = kit.create(1)
    with kit.store.batch() as batch:
        rows = batch.read({run_id: 1}, 1, 1 << 20)
        batch.mark_published([r.id for r in rows], {run_id: 2})
    assert kit.store.find_pending(10) == []


# Resuming.


def test_resume_restarts_only_stalled_runs_named_or_all(kit: Kit) -> None:
    first, second, active = kit.create(1), kit.create(1), kit.create(1)
    with kit.store.batch() as batch:
        batch.record_refusals({first: "no", second: "no"}, {first: 60.0, second: 60.0}, 1)
    assert kit.store.resume([first, active, uuid.uuid4()]) == [first]
    assert kit.state(first) == State(1, "active", 0, None, frozenset())
    assert kit.store.resume(None) == [second]
    assert kit.store.resume(None) == []
    assert kit.store.find_pending(10) == sorted([first, second, active])
