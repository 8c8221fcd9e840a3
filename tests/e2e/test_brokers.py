"""Brokers that restart: a real worker and beat on a Redis broker of the test's own, which the
test stops and starts again while the worker holds drains it has not acknowledged.

With the Redis transport's ack emulation, Celery 5.7.0 killed such a worker when it
reconnected (``Unrecoverable error: AttributeError("'NoneType' object has no attribute
'hostname'")`` from kombu's ``restore_unacked``); ``celeryconfig`` turns ack emulation off.
What must hold: the worker lives through the restarts, and every run is drained exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import URL, text
from sqlalchemy.orm import Session, sessionmaker

from models.db import libpq_url
from tasks.settings import Settings
from tasks.testing.processes import CeleryProcess
from tasks.testing.workers import Workers
from tests.helpers import append, db_state, seed, stream_seqs, wait_until
from tests.servers import RedisServer, redis_server

RESTARTS = 2  # the second proves the reconnected worker lives through one more
POOL = 2  # the worker's pool processes


@pytest.fixture(params=["no-persistence", "appendonly"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """The broker, ours to restart: without persistence (a restart loses every message) or
    with an append-only file (a restart keeps them)."""
    options = ("--appendonly", "yes") if request.param == "appendonly" else ()
    workdir = tmp_path / "broker"
    workdir.mkdir()
    with redis_server(workdir, *options) as server:
        yield server


@pytest.fixture
def runs_lock(db_url: URL) -> Iterator[psycopg.Connection]:
    """A connection of the test's own, to hold the ``runs`` table locked when it says so."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        yield conn
        conn.rollback()


def blocked_drains(Session: sessionmaker[Session]) -> int:
    """Sessions of the test database waiting for a lock (the drains stuck behind ours)."""
    # A transaction of its own each time: pg_stat_activity is a snapshot per transaction.
    with Session() as session:
        count = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(count or 0)


def connections(worker: CeleryProcess) -> int:
    """How many times the worker has connected to its broker so far."""
    return worker.read_log().count("Connected to redis")


def drained(Session: sessionmaker[Session], expected: dict[uuid.UUID, int]) -> bool:
    return all(db_state(Session, r) == (n + 1, n, 0) for r, n in expected.items())


def test_a_worker_lives_through_restarts_of_its_redis_broker_and_drains_every_run_exactly_once(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    broker: RedisServer,
    runs_lock: psycopg.Connection,
    celery_processes: Workers,
    tmp_path: Path,
) -> None:
    expected = dict.fromkeys(seed(Session, runs=8, events=4), 4)
    env = {
        "CELERY_BROKER_URL": broker.url,
        # A drain per run, two events a drain, then a follow-up: drains in flight all along.
        "OUTBOX_GROUP_SIZE": "1",
        "OUTBOX_BATCH_SIZE": "2",
        "OUTBOX_MAX_BATCHES": "1",
        # The drains a restart loses come back when their marks expire: soon, in a test.
        "OUTBOX_QUEUED_TTL": "3",
        # Where kombu dumps the messages it could not hand back: the test's own directory.
        "TMPDIR": str(tmp_path),
    }
    # A prefetch far above what is ever queued: the worker keeps polling the broker while
    # it holds unacknowledged drains, which is when a restart used to kill it.
    worker = celery_processes.start_worker(
        concurrency=POOL, options=["--prefetch-multiplier=32"], **env
    )
    celery_processes.start_beat(interval=0.5, **env)

    for _ in range(RESTARTS):
        for run_id in expected:  # producers commit; drains queue up for them
            append(Session, run_id, 2)
            expected[run_id] += 2
        # Drains now wait for the lock: both pool processes are held in one, and the worker
        # holds the other drains it has taken, unacknowledged, while the broker restarts.
        runs_lock.execute("LOCK TABLE runs IN EXCLUSIVE MODE")
        wait_until(lambda: blocked_drains(Session) == POOL, 30, "the pool to hold drains")
        before = connections(worker)
        broker.stop()
        broker.start()
        wait_until(
            lambda: connections(worker) > before or not worker.alive(),  # noqa: B023
            60,
            "the worker to reconnect",
        )
        runs_lock.rollback()
        assert worker.alive(), worker.tail()

    wait_until(lambda: drained(Session, expected), 60, "every run to be drained")
    assert worker.alive(), worker.tail()
    logs = worker.read_log()
    assert logs.count("Connected to redis") == RESTARTS + 1  # one process, reconnected
    # Every restart found the worker holding drains it had not acknowledged.
    assert logs.count("unacknowledged message(s)") == RESTARTS
    assert "Unrecoverable error" not in logs
    for run_id, events in expected.items():
        seqs = stream_seqs(redis_client, settings.stream_prefix, run_id)
        assert seqs == list(range(1, events + 1))
