"""End to end: real `celery worker` (prefork) and beat subprocesses against the real broker.

Every test runs on both brokers, Redis and RabbitMQ, each in a queue of its own. The worker
and beat are always stopped by the ``celery_processes`` fixture, pass or fail.
"""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import RunOutbox
from tasks import Status, drain_outbox_for_run
from tasks.redis_sink import RedisStreamSink, stream_key
from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.workers import Workers
from tests.helpers import append, db_state, seed, stream_seqs, wait_until
from tests.workers import BROKERS

pytestmark = pytest.mark.parametrize("broker_url", BROKERS, indirect=True)


def test_celery_call_drain_run_on_a_real_worker_publishes_the_run(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
) -> None:
    [run_id] = seed(Session, events=5)
    celery_processes.start_worker()

    celery_processes.call("outbox.drain_run", str(run_id))

    wait_until(
        lambda: stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4, 5],
        30,
        "the worker to publish the run",
    )
    wait_until(lambda: db_state(Session, run_id) == (6, 5, 0), 30, "the worker to commit")
    assert "outbox.drain_run" in celery_processes.logs()


def test_celery_call_dispatch_drains_every_pending_run_through_the_broker(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
) -> None:
    runs = seed(Session, runs=5, events=3)
    celery_processes.start_worker()

    celery_processes.call("outbox.dispatch")

    for run_id in runs:
        wait_until(
            lambda run_id=run_id: db_state(Session, run_id) == (4, 3, 0), 30, f"run {run_id}"
        )
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3]


def test_seeding_and_draining_by_hand_while_worker_and_beat_run_never_crashes_or_duplicates(
    Session: sessionmaker[Session],
    settings: Settings,
    publisher: RedisStreamSink,
    redis_client: redis.Redis,
    celery_processes: Workers,
) -> None:
    # The original failure: a background drainer (here a real worker fed by beat every 0.1 s)
    # consumed rows a test had just seeded, and the test's own drain then crashed.
    with celery_processes.together():  # started side by side, both ready when the block ends
        worker = celery_processes.start_worker(concurrency=2)
        beat = celery_processes.start_beat(interval=0.1)
    assert processes.WORKER_READY in worker.read_log()
    assert processes.BEAT_READY in beat.read_log()
    wait_until(lambda: "outbox.dispatch" in beat.log.read_text(), 30, "beat's first dispatch")
    statuses: set[Status] = set()

    for _ in range(15):
        [run_id] = seed(Session, events=40)
        result = drain_outbox_for_run(
            run_id, session_factory=Session, publisher=publisher, settings=settings
        )
        statuses.add(result.status)
        wait_until(lambda run_id=run_id: db_state(Session, run_id) == (41, 40, 0), 30, "drained")
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == list(range(1, 41))

    assert statuses <= {Status.DRAINED, Status.LOCKED}
    # The worker and beat were live all along: a run nobody drains by hand still gets drained.
    [untouched] = seed(Session, events=3)
    wait_until(lambda: db_state(Session, untouched) == (4, 3, 0), 30, "beat and the worker")
    assert stream_seqs(redis_client, settings.stream_prefix, untouched) == [1, 2, 3]


def test_a_real_worker_retries_a_refused_run_with_backoff_then_parks_it(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
) -> None:
    [run_id] = seed(Session, events=2)
    redis_client.set(stream_key(settings.stream_prefix, run_id), "not a stream")
    with celery_processes.together():
        celery_processes.start_worker()
        celery_processes.start_beat(interval=0.2)  # dispatch queues each retry when it is due

    def parked() -> bool:
        with Session() as session:
            row = session.scalars(select(RunOutbox).where(RunOutbox.run_id == run_id)).one()
            return row.status == "stalled"

    wait_until(parked, 60, "the run to be parked after its retries")
    with Session() as session:
        row = session.scalars(select(RunOutbox).where(RunOutbox.run_id == run_id)).one()
    assert (row.attempts, row.next_seq) == (settings.max_attempts, 1)
    assert "WRONGTYPE" in (row.last_error or "")
    # One warning per attempt, no traceback: a refusal is an expected outcome, not a crash.
    logs = celery_processes.logs()
    assert logs.count(f"sink refused run {run_id}") == settings.max_attempts
    assert "Traceback" not in logs


def test_kicks_alone_drain_every_committed_event_through_a_real_worker(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    broker_queue: str,
    celery_processes: Workers,
) -> None:
    runs = seed(Session, runs=4, events=0)
    celery_processes.start_worker(concurrency=2)

    # Producers commit while the worker drains: no beat, so only the kicks queue drains.
    for k in range(40):
        append(Session, runs[k % 4], 1, kick=True)

    for run_id in runs:
        wait_until(
            lambda run_id=run_id: db_state(Session, run_id) == (11, 10, 0), 30, f"run {run_id}"
        )
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == list(range(1, 11))
    logs = celery_processes.logs()
    assert "Task outbox.drain_kicked[" in logs
    assert "Task outbox.dispatch[" not in logs
