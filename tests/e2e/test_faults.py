"""Fault paths end to end: real workers and beat against a sink that goes away, a worker killed
while it holds drains, a kicked drain cut short by its time limit."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import URL
from sqlalchemy.orm import Session, sessionmaker

from models.db import libpq_url
from tasks import runtime
from tasks.cli import main
from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.workers import Workers
from tests.helpers import append, db_state, seed, stream_seqs, wait_until
from tests.servers import RedisServer, redis_server
from tests.workers import BROKERS, is_amqp, queued_messages


@pytest.fixture
def sink_server(tmp_path: Path) -> Iterator[RedisServer]:
    """The sink's Redis, ours to stop and start; it keeps its data across a restart (AOF)."""
    with redis_server(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as server:
        yield server


def drained(Session: sessionmaker[Session], runs: list[uuid.UUID], events: int) -> bool:
    return all(db_state(Session, r) == (events + 1, events, 0) for r in runs)


def test_a_sink_outage_logs_once_when_it_starts_once_per_check_and_once_when_it_ends(
    Session: sessionmaker[Session],
    settings: Settings,
    sink_server: RedisServer,
    celery_processes: Workers,
) -> None:
    runs = seed(Session, runs=3, events=2)
    # Checks 1 s, then 2 s apart at most (OUTBOX_OUTAGE_CHECK_MAX; 15 s by default), so the
    # sink's return is seen within 2 s: the back-off's doubling below that is unit-tested.
    with celery_processes.together():
        celery_processes.start_worker(OUTBOX_REDIS_URL=sink_server.url, OUTBOX_OUTAGE_CHECK_MAX="2")
        celery_processes.start_beat(interval=0.2)
    wait_until(lambda: drained(Session, runs, 2), 30, "the first events to be drained")

    sink_server.stop()
    for run_id in runs:
        append(Session, run_id, 2)
    wait_until(lambda: "(check 3;" in celery_processes.logs(), 60, "three checks of the sink")

    logs = celery_processes.logs()
    assert logs.count("sink unavailable, drains wait for it") == 1
    checks = re.findall(r"sink still unavailable since \S+ \(check (\d+); next in (\d+)s\)", logs)
    assert checks == [("1", "2"), ("2", "2"), ("3", "2")]  # one line per check, at the cap
    assert "Traceback" not in logs
    # `outbox status` says so, and shows the error on the waiting runs.
    runtime.configure(
        Settings.from_env(
            {
                "OUTBOX_DATABASE_URL": settings.database_url.render_as_string(False),
                "OUTBOX_REDIS_URL": sink_server.url,
            }
        )
    )
    status = CliRunner().invoke(main, ["status"])
    assert re.search(r"sink unavailable since \S+: Redis unavailable", status.output), status.output
    assert status.output.count("Redis unavailable") >= 1 + len(runs)

    sink_server.start()
    wait_until(lambda: drained(Session, runs, 4), 60, "the runs to be drained after the outage")
    wait_until(lambda: "sink available again after" in celery_processes.logs(), 10, "the end")
    logs = celery_processes.logs()
    assert logs.count("sink available again after") == 1
    assert "Traceback" not in logs
    client = sink_server.client()
    for run_id in runs:
        assert stream_seqs(client, settings.stream_prefix, run_id) == [1, 2, 3, 4]


@pytest.fixture
def runs_table_locked(db_url: URL) -> Iterator[psycopg.Connection]:
    """A connection that will hold ``runs`` locked: any drain blocks on its first statement."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        yield conn
        conn.rollback()


LOST_DRAIN_TTL = 5  # OUTBOX_QUEUED_TTL of the test below
SHORT_TTL = {"OUTBOX_QUEUED_TTL": str(LOST_DRAIN_TTL)}


@pytest.mark.parametrize("broker_url", BROKERS, indirect=True)
def test_runs_whose_drains_a_killed_worker_held_unstarted_are_drained_within_a_minute(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    broker_url: str,
    celery_processes: Workers,
    runs_table_locked: psycopg.Connection,
) -> None:
    runs = seed(Session, runs=6, events=3)
    # One pool process that prefetches 4 drains: it starts one and holds 3 unstarted. Its
    # drains' marks expire after LOST_DRAIN_TTL, not the default's 30 s: the same mechanism,
    # a shorter wait.
    doomed = celery_processes.start_worker(
        concurrency=1,
        options=["--prefetch-multiplier=4"],
        OUTBOX_GROUP_SIZE="1",
        **SHORT_TTL,
    )
    runs_table_locked.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
    celery_processes.call("outbox.dispatch")  # queues 6 drains of one run each, marks set
    queue = celery_processes.queue
    wait_until(
        lambda: queued_messages(broker_url, queue, redis_client) == 2,
        30,
        "the worker to take 4 drains",
    )
    wait_until(lambda: blocked_drains(runs_table_locked) == 1, 30, "one drain to start")

    # The parent: RabbitMQ hands its 4 drains back as soon as its connection drops; the Redis
    # broker, without ack emulation (celeryconfig), never does: the 3 unstarted ones are lost.
    doomed.signal(signal.SIGKILL)
    doomed.stop()
    runs_table_locked.rollback()
    started = time.monotonic()
    with celery_processes.together():
        celery_processes.start_worker(OUTBOX_GROUP_SIZE="1", **SHORT_TTL)
        celery_processes.start_beat(interval=0.5, **SHORT_TTL)
    wait_until(lambda: drained(Session, runs, 3), 60, "every run to be drained")
    took = time.monotonic() - started

    # On Redis, the lost drains' marks expire after OUTBOX_QUEUED_TTL and dispatch queues the
    # runs again (with the default's 30 s, within a minute); on RabbitMQ, the new worker gets
    # the drains themselves back at once.
    assert took < LOST_DRAIN_TTL + 30, took
    for run_id in runs:
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3]
    broker = "RabbitMQ" if is_amqp(broker_url) else "Redis"
    print(f"{broker} broker: lost drains drained again {took:.1f}s after the worker was killed")


def blocked_drains(conn: psycopg.Connection) -> int:
    """Sessions of the test database waiting for a lock (the drains stuck behind ours)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0


def test_a_kicked_drain_cut_short_by_its_time_limit_leaves_the_next_kick_free_to_drain(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
    runs_table_locked: psycopg.Connection,
) -> None:
    first, second = seed(Session, runs=2, events=0)
    # Time limits travel in the message, from the sender's configuration: the producers and
    # the worker share it, as they would in production.
    limits = {"CELERY_TASK_SOFT_TIME_LIMIT": "2", "CELERY_TASK_TIME_LIMIT": "20"}
    celery_processes.start_worker(concurrency=1, **limits)
    append(Session, first, 2)
    runs_table_locked.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
    # Its producer's kick: the kicked drain takes the run and blocks behind the lock.
    kick_from_a_producer(celery_processes, first, **limits)
    wait_until(lambda: "SoftTimeLimitExceeded" in celery_processes.logs(), 30, "the time limit")
    runs_table_locked.rollback()

    append(Session, second, 1)
    kick_from_a_producer(celery_processes, second, **limits)  # the mark is free: a new drain

    wait_until(lambda: drained(Session, [second], 1), 30, "the second kick's drain")
    wait_until(lambda: drained(Session, [first], 2), 30, "the run put back to be drained")
    logs = celery_processes.logs()
    assert logs.count("Task outbox.drain_kicked[") >= 2
    assert stream_seqs(redis_client, settings.stream_prefix, first) == [1, 2]


def kick_from_a_producer(processes_: Workers, run_id: uuid.UUID, **env: str) -> None:
    """Kick ``run_id`` from a producer process configured like the workers."""
    program = "import sys, uuid\nfrom tasks.outbox import kick\nkick([uuid.UUID(sys.argv[1])])\n"
    subprocess.run(
        [sys.executable, "-c", program, str(run_id)],
        cwd=processes.PROJECT_ROOT,
        env=processes_.env | env,
        check=True,
        timeout=60,
    )
