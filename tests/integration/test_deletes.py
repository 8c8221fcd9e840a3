"""Deletes (of runs and of events) racing drains: no crash, no deadlock, a clean status."""

from __future__ import annotations

import dataclasses
import random
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import redis
from sqlalchemy import Engine, delete, text
from sqlalchemy.orm import Session, sessionmaker

from models import RunEvent
from tasks import Status, drain_outbox_for_run, drain_outbox_once
from tasks.drain import drain_batch
from tasks.pg import SqlStore
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings
from tasks.sink import Entry, PublishOutcome
from tests.helpers import db_state, seed, stream_seqs, wait_until


class PublishThen(RedisStreamSink):
    """The real Redis publisher that runs ``before`` once, between the lock and the update."""

    def __init__(self, real: RedisStreamSink, before: object) -> None:
        super().__init__(real.client, real.prefix)
        self.before = before

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        if self.before is not None:
            before, self.before = self.before, None
            before()  # type: ignore[operator]
        return super().publish(entries)


def _lock_waiters(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_a_run_deleted_while_its_drain_holds_it_waits_then_the_next_drain_finds_it_missing(
    Session: sessionmaker[Session],
    engine: Engine,
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=4)

    def delete_run() -> None:
        with Session() as session, session.begin():
            session.execute(text("DELETE FROM runs WHERE id = :r"), {"r": run_id})

    with ThreadPoolExecutor(max_workers=1) as pool:
        deletes: list[Future[None]] = []

        def start_delete_and_let_it_block() -> None:
            deletes.append(pool.submit(delete_run))
            wait_until(lambda: _lock_waiters(engine) >= 1, 10, "the DELETE to wait on the drain")

        racing = PublishThen(publisher, start_delete_and_let_it_block)
        result = drain_outbox_for_run(
            run_id, session_factory=Session, publisher=racing, settings=settings
        )
        deletes[0].result(timeout=10)  # the delete went through once the drain committed

    assert (result.status, result.published) == (Status.DRAINED, 4)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4]
    after = drain_outbox_for_run(
        run_id, session_factory=Session, publisher=publisher, settings=settings
    )
    assert (after.status, after.published) == (Status.MISSING, 0)


def test_a_drain_that_meets_a_delete_in_progress_skips_the_run_without_waiting(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=2)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}
    with Session() as deleter, deleter.begin():
        deleter.execute(text("DELETE FROM runs WHERE id = :r"), {"r": run_id})
        during = drain_outbox_for_run(run_id, **kwargs)
    after = drain_outbox_for_run(run_id, **kwargs)

    assert (during.status, during.published) == (Status.LOCKED, 0)
    assert (after.status, after.published) == (Status.MISSING, 0)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == []


def test_events_deleted_between_the_lock_and_the_update_end_the_drain_cleanly(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=5)

    def delete_some_events() -> None:
        with Session() as session, session.begin():
            session.execute(
                delete(RunEvent).where(RunEvent.run_id == run_id, RunEvent.seq.in_([2, 4]))
            )

    racing = PublishThen(publisher, delete_some_events)
    result = drain_outbox_for_run(
        run_id, session_factory=Session, publisher=racing, settings=settings
    )

    assert result.status == Status.DRAINED
    # Read before the delete, so in the stream; the rows the update found are marked.
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4, 5]
    assert db_state(Session, run_id) == (6, 3, 0)


def test_deleting_runs_while_many_threads_drain_them_never_crashes_or_deadlocks(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
) -> None:
    runs = seed(Session, runs=30, events=20)
    doomed = runs[::2]
    # Small batches, so drains of a run keep coming back while the deletes go on.
    small = dataclasses.replace(settings, batch_size=2, max_batches=1, group_size=4)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": small}
    stop = threading.Event()
    statuses: set[str] = set()

    def drainer(seed_value: int) -> None:
        order = random.Random(seed_value)
        while not stop.is_set():
            statuses.add(drain_outbox_for_run(order.choice(runs), **kwargs).status.value)
            drain_outbox_once(**kwargs)

    def deleter() -> None:
        for run_id in doomed:
            with Session() as session, session.begin():
                session.execute(text("DELETE FROM runs WHERE id = :r"), {"r": run_id})

    with ThreadPoolExecutor(max_workers=5) as pool:
        drainers = [pool.submit(drainer, n) for n in range(4)]
        try:
            pool.submit(deleter).result(timeout=60)  # a deadlock would raise here...
        finally:
            stop.set()
        for future in drainers:
            future.result(timeout=60)  # ...or here

    assert statuses <= {"drained", "more", "locked", "missing"}
    for run_id in set(runs) - set(doomed):
        while drain_outbox_for_run(run_id, **kwargs).status is not Status.DRAINED:
            pass
        assert db_state(Session, run_id) == (21, 20, 0)
    for run_id in doomed:
        assert db_state(Session, run_id) == (0, 0, 0)


def test_draining_a_run_id_that_never_existed_alongside_real_runs_reports_each(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
) -> None:
    [run_id] = seed(Session, events=1)
    ghost = uuid.uuid4()

    outcomes = drain_batch(SqlStore(Session), publisher, [run_id, ghost], settings.limits)

    assert (outcomes[run_id].status, outcomes[run_id].published) == (Status.DRAINED, 1)
    assert outcomes[ghost].status == Status.MISSING
