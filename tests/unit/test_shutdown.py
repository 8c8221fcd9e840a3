"""Graceful shutdown, service-free: drains stop between batches when asked, the flag reaches
forked pool processes, and the watchdog turns a shutdown that overstays into a cold one."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest

from models.errors import ConfigError
from tasks import drain, jobs, shutdown
from tasks.drain import Limits, Status
from tasks.outages import OutageLog, SinkGate
from tasks.queueing import DrainQueue
from tasks.settings import CelerySettings
from tasks.sink import Entry, InMemorySink, PublishOutcome
from tests.fakes import (
    InMemoryHealth,
    InMemoryKicked,
    InMemoryMarks,
    InMemoryStore,
    RecordingSender,
)
from tests.helpers import came_true, wait_until


class StopAfter:
    """A ``should_stop`` that says "stop" once ``batches`` batches were published."""

    def __init__(self, sink: CountingSink, batches: int) -> None:
        self.sink = sink
        self.batches = batches

    def __call__(self) -> bool:
        return self.sink.publishes >= self.batches


class CountingSink(InMemorySink):
    """The in-memory sink, counting its publishes (one per batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.publishes = 0

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        self.publishes += 1
        return super().publish(entries)


def test_a_drain_asked_to_stop_ends_between_two_batches_with_its_runs_left_as_more() -> None:
    store = InMemoryStore()
    first, second = store.seed(runs=2, events=10)
    sink = CountingSink()
    limits = Limits(batch_size=4, max_batches=100)  # 2 events per run per batch

    results = drain.drain_runs(store, sink, [first, second], limits, should_stop=StopAfter(sink, 3))

    assert sink.publishes == 3
    assert [(r.status, r.published) for r in results] == [(Status.MORE, 6), (Status.MORE, 6)]
    assert store.pending(first) == [7, 8, 9, 10]  # the three batches committed, no more
    assert [e.seq for e in sink.entries(first)] == [1, 2, 3, 4, 5, 6]


def test_a_drain_asked_to_stop_before_it_starts_publishes_nothing() -> None:
    store = InMemoryStore()
    [run] = store.seed(runs=1, events=3)

    [result] = drain.drain_runs(store, InMemorySink(), [run], Limits(), should_stop=lambda: True)

    assert (result.status, result.published) == (Status.MORE, 0)
    assert store.pending(run) == [1, 2, 3]


def parts(
    store: InMemoryStore, should_stop: Callable[[], bool]
) -> tuple[jobs.Worker, RecordingSender]:
    marks, kicked, sender = InMemoryMarks(store.clock), InMemoryKicked(), RecordingSender()
    worker = jobs.Worker(
        store=store,
        sink=InMemorySink(),
        queue=DrainQueue(marks, kicked, sender, group_size=2, ttl=30),
        gate=SinkGate(InMemoryHealth(store.clock)),
        cursor=marks,
        kicked=kicked,
        limits=Limits(batch_size=2, max_batches=100),
        kick_linger=0.01,
        database=OutageLog("database", clock=store.clock),
        should_stop=should_stop,
    )
    return worker, sender


def test_a_drain_task_stopped_by_a_shutdown_queues_a_follow_up_for_the_next_worker() -> None:
    store = InMemoryStore()
    [run] = store.seed(runs=1, events=5)
    worker, sender = parts(store, lambda: True)

    group = jobs.drain_group(worker, [run])

    assert [r.status for r in group.results] == [Status.MORE]
    assert sender.sent == [("outbox.drain_run", [run])]


def test_a_kicked_drain_stopped_by_a_shutdown_hands_its_set_over_to_a_successor() -> None:
    store = InMemoryStore()
    runs = store.seed(runs=3, events=1)
    worker, sender = parts(store, lambda: True)
    assert isinstance(worker.kicked, InMemoryKicked)
    worker.kicked.add(runs, ttl=30)

    group = jobs.drain_kicked(worker)

    assert group.results == []
    assert sender.sent == [("outbox.drain_kicked", [])]  # the successor, mark still held
    assert worker.kicked.marked
    assert worker.kicked.members == set(runs)  # nothing taken, nothing lost


@pytest.fixture
def flag() -> Iterator[None]:
    shutdown.clear()
    yield
    shutdown.clear()


def _wait_for_the_flag(seen: multiprocessing.synchronize.Event) -> None:
    if came_true(shutdown.requested, 30):
        seen.set()


@pytest.mark.usefixtures("flag")
def test_the_request_made_in_the_main_process_reaches_a_pool_process_forked_before_it() -> None:
    context = multiprocessing.get_context("fork")
    seen = context.Event()
    child = context.Process(target=_wait_for_the_flag, args=(seen,))
    child.start()  # forked now, as Celery's pool processes are, before the shutdown
    try:
        assert not shutdown.requested()
        shutdown.request()
        child.join(60)
        assert seen.is_set()
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)


def test_the_watchdog_escalates_once_its_timeout_is_over() -> None:
    fired = threading.Event()
    watchdog = shutdown.Watchdog(0.05, escalate=fired.set)

    watchdog.start()

    wait_until(fired.is_set, 10, "the watchdog to fire")


def test_a_cancelled_watchdog_never_escalates() -> None:
    fired = threading.Event()
    watchdog = shutdown.Watchdog(0.05, escalate=fired.set)

    watchdog.cancel()
    watchdog.start()
    watchdog.thread.join(10)

    assert not watchdog.thread.is_alive()
    assert not fired.is_set()


def test_the_shutdown_timeout_is_thirty_seconds_unless_set_and_is_checked() -> None:
    assert CelerySettings.from_env({}).shutdown_timeout == 30
    assert CelerySettings.from_env({"OUTBOX_SHUTDOWN_TIMEOUT": "2.5"}).shutdown_timeout == 2.5
    with pytest.raises(ConfigError) as refused:
        CelerySettings.from_env({"OUTBOX_SHUTDOWN_TIMEOUT": "0"})
    assert str(refused.value) == (
        "OUTBOX_SHUTDOWN_TIMEOUT must be a number of seconds above 0 and at most 86400, got '0'"
    )
