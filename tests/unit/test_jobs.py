"""What the tasks do, driven without a broker: drain groups, the kicked drain, dispatch."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence

import pytest

from tasks import jobs
from tasks.drain import Limits, Status
from tasks.outages import OutageLog, SinkGate
from tasks.queueing import DrainQueue
from tasks.sink import Entry, InMemorySink, PublishOutcome
from tests.fakes import (
    Clock,
    InMemoryHealth,
    InMemoryKicked,
    InMemoryMarks,
    InMemoryStore,
    RecordingSender,
)


class Parts:
    """A worker's collaborators, all in memory, on one clock."""

    def __init__(self, sink: InMemorySink | None = None, **limits: int) -> None:
        self.clock = Clock()
        self.store = InMemoryStore(self.clock)
        self.sink = sink or InMemorySink()
        self.marks = InMemoryMarks(self.clock)
        self.kicked = InMemoryKicked()
        self.sender = RecordingSender()
        self.health = InMemoryHealth(self.clock)
        self.log = logging.getLogger("test.outages")
        self.worker = jobs.Worker(
            store=self.store,
            sink=self.sink,
            queue=DrainQueue(self.marks, self.kicked, self.sender, group_size=2, ttl=30),
            gate=SinkGate(self.health, self.log),
            cursor=self.marks,
            kicked=self.kicked,
            limits=Limits(**({"max_attempts": 3} | limits)),
            kick_linger=0.01,
            database=OutageLog("database", self.log, self.clock),
        )


def test_a_drain_group_releases_its_marks_then_queues_follow_ups_for_runs_with_more() -> None:
    parts = Parts(batch_size=4, max_batches=1)  # 2 events per run
    deep, short = parts.store.seed(runs=2, events=0)
    parts.store.append(deep, 5)
    parts.store.append(short, 1)
    parts.marks.claim([deep, short], ttl=30)  # as dispatch left them

    group = jobs.drain_group(parts.worker, [deep, short])

    assert [(r.status, r.published) for r in group.results] == [
        (Status.MORE, 2),
        (Status.DRAINED, 1),
    ]
    assert parts.sender.sent == [("outbox.drain_run", [deep])]  # the follow-up of the deep run
    assert parts.marks.held() == {deep}  # which holds its mark again
    assert group.as_dict() == {
        "runs": 2,
        "published": 3,
        "already_present": 0,
        "statuses": {"more": 1, "drained": 1},
    }


def test_a_drain_group_that_meets_an_outage_records_it_once_and_queues_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = Parts()
    runs = parts.store.seed(runs=2, events=2)
    parts.sink.unavailable = "OOM command not allowed"

    first = jobs.drain_group(parts.worker, runs)
    second = jobs.drain_group(parts.worker, runs)

    for group in (first, second):
        assert group.trouble == "OOM command not allowed"
        assert [r.status for r in group.results] == [Status.MORE, Status.MORE]
    assert parts.sender.sent == []
    assert parts.health.down_since is not None
    assert caplog.text.count("sink unavailable") == 1  # once for the outage, not per drain
    assert [parts.store.runs[r].attempts for r in runs] == [0, 0]


def test_a_drain_group_that_cannot_reach_the_database_logs_once_and_ends_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = Parts()
    runs = parts.store.seed(runs=1, events=1)
    parts.store.unavailable = "PostgreSQL unavailable: terminating connection"

    for _ in range(3):
        group = jobs.drain_group(parts.worker, runs)
        assert group.trouble is not None
        assert [r.status for r in group.results] == [Status.MORE]

    assert caplog.text.count("database unavailable") == 1
    parts.store.unavailable = None
    assert jobs.drain_group(parts.worker, runs).results[0].status is Status.DRAINED
    assert caplog.text.count("database available again") == 1


def test_the_kicked_drain_drains_the_set_until_it_is_empty_then_clears_its_mark() -> None:
    parts = Parts()
    runs = parts.store.seed(runs=3, events=2)
    assert parts.kicked.add(runs, ttl=30)
    late = parts.store.seed(runs=1, events=1)
    parts.kicked.kicks_while_waiting.append(late)  # a commit while it lingers

    group = jobs.drain_kicked(parts.worker)

    assert group.as_dict()["statuses"] == {"drained": 4}
    assert (parts.kicked.members, parts.kicked.marked) == (set(), False)
    assert parts.sender.sent == []


def test_the_kicked_drain_hands_over_to_a_successor_after_max_batches_groups() -> None:
    parts = Parts(max_batches=2, group_size=2)
    runs = parts.store.seed(runs=5, events=1)
    parts.kicked.add(runs, ttl=30)

    group = jobs.drain_kicked(parts.worker)

    assert group.as_dict()["runs"] == 4
    assert len(parts.kicked.members) == 1
    assert parts.kicked.marked  # held for the successor
    assert parts.sender.sent == [("outbox.drain_kicked", [])]


class Exploding(InMemorySink):
    """A sink whose publish raises ``error`` (a time limit, a bug: anything)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        raise self.error


class TimeLimit(BaseException):
    """Like billiard's SoftTimeLimitExceeded, raised asynchronously into the task."""


@pytest.mark.parametrize("error", [RuntimeError("a bug"), TimeLimit()], ids=["error", "limit"])
def test_a_kicked_drain_that_fails_puts_its_runs_back_and_releases_its_mark(
    error: BaseException,
) -> None:
    parts = Parts(sink=Exploding(error))
    runs = parts.store.seed(runs=2, events=1)
    parts.kicked.add(runs, ttl=30)

    with pytest.raises(type(error)):
        jobs.drain_kicked(parts.worker)

    assert parts.kicked.members == set(runs)
    assert not parts.kicked.marked  # the next kick queues a new drain


@pytest.mark.parametrize("where", ["take", "wait", "finish", "hold"])
def test_a_kicked_drain_whose_redis_calls_fail_reports_the_outage_and_releases_its_mark(
    where: str,
) -> None:
    parts = Parts()
    parts.kicked.marked = True
    parts.kicked.fail_on = {where}

    group = jobs.drain_kicked(parts.worker)

    assert group.trouble == f"Redis unavailable in {where}"
    assert not parts.kicked.marked
    assert parts.health.down_since is not None  # recorded once for the deployment


def test_a_kicked_drain_that_meets_an_outage_puts_the_group_back_and_ends() -> None:
    parts = Parts()
    runs = parts.store.seed(runs=2, events=1)
    parts.kicked.add(runs, ttl=30)
    parts.sink.unavailable = "READONLY You can't write against a read only replica."

    group = jobs.drain_kicked(parts.worker)

    assert group.trouble is not None
    assert group.trouble.startswith("READONLY")
    assert (parts.kicked.members, parts.kicked.marked) == (set(runs), False)


def test_dispatch_queues_each_due_run_once_in_groups_and_wraps_around() -> None:
    parts = Parts(dispatch_limit=3)
    runs = sorted(parts.store.seed(runs=5, events=1))

    first = jobs.dispatch(parts.worker)
    second = jobs.dispatch(parts.worker)
    third = jobs.dispatch(parts.worker)

    assert [d.as_dict() for d in (first, second, third)] == [
        {"found": 3, "enqueued": 3},
        {"found": 3, "enqueued": 2},  # the runs after the third, then from the first again
        {"found": 3, "enqueued": 0},
    ]
    assert parts.sender.sent == [
        ("outbox.drain_runs", runs[0:2]),
        ("outbox.drain_run", runs[2:3]),
        ("outbox.drain_runs", runs[3:5]),
    ]


def test_a_lost_drain_is_queued_again_once_its_mark_expires() -> None:
    parts = Parts()
    [run_id] = parts.store.seed(runs=1, events=1)
    assert jobs.dispatch(parts.worker).enqueued == 1  # ... and the message is lost

    parts.clock.advance(29)
    assert jobs.dispatch(parts.worker).enqueued == 0
    parts.clock.advance(1)
    assert jobs.dispatch(parts.worker).enqueued == 1
    assert parts.sender.sent == [("outbox.drain_run", [run_id])] * 2


def test_with_outbox_outage_check_max_dispatch_checks_a_sink_down_at_least_that_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = Parts()
    parts.worker = dataclasses.replace(parts.worker, gate=SinkGate(parts.health, parts.log, 2))
    parts.store.seed(runs=1, events=1)
    parts.marks.unavailable = "Redis unavailable: ConnectionError: refused"

    for _ in range(40):  # 20 s of beat ticks, 0.5 s apart
        jobs.dispatch(parts.worker)
        parts.clock.advance(0.5)

    checks = re.findall(r"\(check (\d+); next in (\d+)s\)", caplog.text)
    # After 1 s, then every 2 s: ten checks in 20 s, each announcing the next in 2 s.
    assert [int(n) for n, _ in checks] == list(range(1, len(checks) + 1))
    assert 9 <= len(checks) <= 10
    assert {next_in for _, next_in in checks} == {"2"}


def test_dispatch_during_an_outage_checks_with_back_off_and_logs_a_line_per_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = Parts()
    [run_id] = parts.store.seed(runs=1, events=1)
    parts.marks.unavailable = "Redis unavailable: ConnectionError: refused"

    ticks = []
    for _ in range(40):  # 20 s of beat ticks, 0.5 s apart
        ticks.append(jobs.dispatch(parts.worker).as_dict())
        parts.clock.advance(0.5)

    assert all(t == {"found": t["found"], "enqueued": 0, "unavailable": "sink"} for t in ticks)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("sink unavailable, drains wait" in line for line in lines) == 1
    # Checks after 1, 2, 4, 8 seconds (each a line), then every 15: four or five in 20 s.
    assert 4 <= sum("sink still unavailable" in line for line in lines) <= 5
    assert parts.store.runs[run_id].last_error == "Redis unavailable: ConnectionError: refused"

    parts.marks.unavailable = None
    parts.clock.advance(15)
    assert jobs.dispatch(parts.worker).as_dict() == {"found": 1, "enqueued": 1}
    assert "sink available again after" in caplog.records[-1].getMessage()
    assert parts.health.down_since is None


def test_dispatch_reports_a_database_outage_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = Parts()
    parts.store.unavailable = "PostgreSQL unavailable"

    assert jobs.dispatch(parts.worker).as_dict() == {
        "found": 0,
        "enqueued": 0,
        "unavailable": "database",
    }
    assert caplog.text.count("database unavailable") == 1


def test_a_follow_up_that_the_broker_refuses_leaves_no_mark_behind() -> None:
    parts = Parts(batch_size=1, max_batches=1)
    [run_id] = parts.store.seed(runs=1, events=3)
    parts.sender.fail_after = 0

    jobs.drain_group(parts.worker, [run_id])

    assert parts.marks.held() == set()  # dispatch may queue it at its next tick
    with pytest.raises(ConnectionError):  # the broker is still down: beat's next tick retries
        jobs.dispatch(parts.worker)
    assert parts.marks.held() == set()  # and still no mark is left behind
    parts.sender.fail_after = None
    assert jobs.dispatch(parts.worker).enqueued == 1
