"""The plugin's event assertions and its record of what a drain added (no services)."""

from __future__ import annotations

import uuid

import pytest

from tasks.sink import InMemorySink, StreamEntry
from tasks.testing import assert_events, events_diff
from tasks.testing.sinks import RecordingSink
from tests.fakes import Event


def entry(seq: int, type_: str, payload: str) -> StreamEntry:
    return StreamEntry(seq, type_, payload)


def test_the_same_events_in_the_same_order_pass_whatever_the_payloads_key_order() -> None:
    actual = [entry(1, "order.placed", '{"total": "9.90", "id": 1}'), entry(2, "order.paid", "{}")]

    assert_events(actual, [("order.placed", {"id": 1, "total": "9.90"}), ("order.paid", {})])


def test_events_out_of_order_fail_with_a_line_diff_of_expected_and_actual() -> None:
    actual = [entry(1, "b", '{"n": 2}'), entry(2, "a", '{"n": 1}')]

    with pytest.raises(AssertionError) as failed:
        assert_events(actual, [("a", {"n": 1}), ("b", {"n": 2})])

    assert str(failed.value) == (
        "the events are not the expected ones (expected 2, got 2; - expected, + actual):\n"
        '+ b {"n": 2}\n'
        '  a {"n": 1}\n'
        '- b {"n": 2}'
    )


def test_a_missing_event_is_named_in_the_diff() -> None:
    problem = events_diff([("a", {"n": 1})], [("a", {"n": 1}), ("b", {"n": 2})])

    assert problem is not None
    assert "(expected 2, got 1;" in problem
    assert problem.splitlines()[1:] == ['  a {"n": 1}', '- b {"n": 2}']


@pytest.mark.parametrize("other", [1.0, True, "1", [1]])
def test_payloads_of_another_json_type_differ_even_where_python_calls_them_equal(
    other: object,
) -> None:
    assert events_diff([entry(1, "t", '{"v": 1}')], [("t", {"v": other})]) is not None


def test_no_events_expected_and_none_found_pass() -> None:
    assert_events([], [])


def test_the_recording_sink_keeps_the_entries_it_added_not_those_already_present() -> None:
    run_id = uuid.uuid4()
    batch = [Event(run_id, n, n, "t", f'{{"n": {n}}}') for n in (1, 2, 3)]
    inner = InMemorySink()
    inner.publish(batch[:1])  # entry 1 is there already, as after a crash before the commit
    recording = RecordingSink(inner)

    outcome = recording.publish(batch)

    assert (outcome.added[run_id], outcome.present[run_id]) == (2, 1)
    assert [(e.seq, e.payload, e.event_id) for e in recording.take()[run_id]] == [
        (2, '{"n": 2}', 2),
        (3, '{"n": 3}', 3),
    ]
    assert recording.take() == {}
