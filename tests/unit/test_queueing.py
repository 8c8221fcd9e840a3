"""The one queueing primitive and the producers' kick, with in-memory marks and sender."""

from __future__ import annotations

import uuid

import pytest

from tasks.queueing import DrainQueue, Kicker
from tests.fakes import Clock, InMemoryKicked, InMemoryMarks, RecordingSender


def make_queue(sender: RecordingSender | None = None) -> tuple[DrainQueue, InMemoryMarks]:
    marks = InMemoryMarks(Clock())
    queue = DrainQueue(marks, InMemoryKicked(), sender or RecordingSender(), group_size=2, ttl=30)
    return queue, marks


def test_runs_with_a_drain_queued_are_not_queued_again_until_it_starts() -> None:
    queue, marks = make_queue()
    first, second, third = (uuid.uuid4() for _ in range(3))

    assert queue.drain([first, second]) == 2
    assert queue.drain([first, second, third]) == 1
    queue.started([first])
    assert queue.drain([first, second]) == 1
    assert marks.held() == {first, second, third}


def test_a_send_that_fails_midway_releases_the_marks_of_every_run_it_did_not_send() -> None:
    sender = RecordingSender(fail_after=1)
    queue, marks = make_queue(sender)
    runs = [uuid.uuid4() for _ in range(5)]  # three groups: 2, 2, 1

    with pytest.raises(ConnectionError):
        queue.drain(runs)

    assert sender.sent == [("outbox.drain_runs", runs[:2])]
    assert marks.held() == set(runs[:2])  # the sent group's drain is on its way


def test_a_kick_queues_the_kicked_drain_only_when_none_is_queued_or_running() -> None:
    sender = RecordingSender()
    queue, _ = make_queue(sender)
    kicked = queue.kicked
    assert isinstance(kicked, InMemoryKicked)

    assert queue.kick([uuid.uuid4()]) is True
    assert queue.kick([uuid.uuid4()]) is False
    assert sender.sent == [("outbox.drain_kicked", [])]
    assert len(kicked.members) == 2


def test_a_kicked_drain_that_cannot_be_sent_releases_the_mark_for_the_next_kick() -> None:
    sender = RecordingSender(fail_after=0)
    queue, _ = make_queue(sender)
    kicked = queue.kicked
    assert isinstance(kicked, InMemoryKicked)

    with pytest.raises(ConnectionError):
        queue.kick([uuid.uuid4()])

    assert kicked.marked is False
    sender.fail_after = None
    assert queue.kick([uuid.uuid4()]) is True


def test_a_release_that_fails_too_does_not_hide_the_send_error() -> None:
    sender = RecordingSender(fail_after=0)
    queue, marks = make_queue(sender)
    original_release = marks.release

    def release_fails(run_ids: object) -> None:
        marks.unavailable = "Redis unavailable"
        original_release([])

    marks.release = release_fails  # type: ignore[method-assign]

    with pytest.raises(ConnectionError, match="broker unreachable"):
        queue.drain([uuid.uuid4()])


def test_a_failed_kick_never_raises_and_pauses_kicks_for_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    sender = RecordingSender(fail_after=0)
    queue, _ = make_queue(sender)
    built: list[DrainQueue] = []

    def build() -> DrainQueue:
        built.append(queue)
        return queue

    kick = Kicker(build, pause=5, clock=clock)

    kick([uuid.uuid4()])  # the send fails: logged, not raised
    assert queue.kicked.add([uuid.uuid4()], 30) is True  # and the mark was released
    queue.kicked.release()
    sender.fail_after = None
    clock.advance(4.9)
    kick([uuid.uuid4()])  # paused: not even tried
    assert sender.sent == []
    clock.advance(0.1)
    kick([uuid.uuid4()])
    assert sender.sent == [("outbox.drain_kicked", [])]
    assert len(built) == 1  # the queue (and its Redis client) is built once
    assert caplog.text.count("could not kick a drain") == 1
    assert "kicks paused for 5s" in caplog.text
