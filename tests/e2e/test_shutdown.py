"""Graceful shutdown, end to end: a real prefork worker sent SIGTERM in the middle of a long drain.

The worker's drain stops between two batches (tasks.shutdown), so the worker exits well within
OUTBOX_SHUTDOWN_TIMEOUT; a drain stuck inside a batch is cancelled once the timeout is over,
and its batch rolls back. Either way a new worker publishes the rest, and every stream holds
each seq exactly once.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from sqlalchemy import URL, text
from sqlalchemy.orm import Session, sessionmaker

from models import create_run
from models.db import libpq_url
from tasks.redis_sink import stream_key
from tasks.settings import Settings
from tasks.testing.processes import CeleryProcess
from tasks.testing.workers import Workers
from tests.helpers import db_state, stream_seqs, wait_until

SHUTDOWN_TIMEOUT = 10.0  # OUTBOX_SHUTDOWN_TIMEOUT of the workers sent SIGTERM
# One event per batch, and no batch limit: one drain task would take all of a long run, for
# far longer than the timeout (each batch is a transaction and a Redis round trip).
ONE_LONG_DRAIN = {
    "OUTBOX_BATCH_SIZE": "1",
    "OUTBOX_MAX_BATCHES": "10000",
    "OUTBOX_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
}


def seed_many(Session: sessionmaker[Session], events: int) -> uuid.UUID:
    """A run with ``events`` committed events, written in one statement (as a producer's many
    append_event calls would leave them: seqs 1..events, the counter at events)."""
    with Session() as session, session.begin():
        run_id = create_run(session).id
        session.flush()
        session.execute(
            text(
                "INSERT INTO run_events (run_id, seq, type, payload)"
                " SELECT :run_id, s, 'bulk', jsonb_build_object('n', s)"
                " FROM generate_series(1, :events) AS s"
            ),
            {"run_id": run_id, "events": events},
        )
        session.execute(
            text("UPDATE runs SET last_seq = :events WHERE id = :run_id"),
            {"run_id": run_id, "events": events},
        )
    return run_id


def stop_time(worker: CeleryProcess, bound: float) -> float:
    """SIGTERM to the worker's main process (what systemd and docker send); the seconds until
    it exited. Fails if it is still running after ``bound`` seconds."""
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    wait_until(lambda: not worker.alive(), bound, "the worker to exit")
    return time.monotonic() - started


def consistent(
    Session: sessionmaker[Session], client: redis.Redis, prefix: str, run: uuid.UUID
) -> int:
    """Check that the stream holds exactly the events the database marked published, 1..k,
    and the cursor is at k + 1 (each batch committed whole or rolled back); return k."""
    seqs = stream_seqs(client, prefix, run)
    k = len(seqs)
    assert seqs == list(range(1, k + 1))
    next_seq, published, _ = db_state(Session, run)
    assert (next_seq, published) == (k + 1, k)
    return k


def test_a_worker_sent_sigterm_mid_drain_stops_after_its_batch_within_the_timeout(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
) -> None:
    events = 20_000
    run = seed_many(Session, events)
    worker = celery_processes.start_worker(concurrency=1, **ONE_LONG_DRAIN)
    celery_processes.call("outbox.drain_run", str(run))
    key = stream_key(settings.stream_prefix, run)
    wait_until(lambda: redis_client.xlen(key) >= 200, 60, "the drain to be well under way")

    took = stop_time(worker, bound=SHUTDOWN_TIMEOUT + 60)

    assert took < SHUTDOWN_TIMEOUT, took  # the configured bound, not a speed
    assert worker.returncode == 0
    published = consistent(Session, redis_client, settings.stream_prefix, run)
    assert 200 <= published < events  # stopped in the middle, between two batches
    logs = celery_processes.logs()
    assert f"drain of run {run}: seqs 1-{published} published ({published} added" in logs
    assert "drains still running" not in logs  # nothing was left for the timeout to cancel
    assert "Traceback" not in logs

    # The drain queued its follow-up before it ended: a new worker, with the default batch
    # size, takes it from the broker and publishes the rest.
    celery_processes.start_worker()
    wait_until(lambda: db_state(Session, run) == (events + 1, events, 0), 120, "the rest")
    assert stream_seqs(redis_client, settings.stream_prefix, run) == list(range(1, events + 1))
    print(f"stopped {took:.2f}s after SIGTERM, after {published} of {events} events")


@pytest.fixture
def runs_table_locked(db_url: URL) -> Iterator[psycopg.Connection]:
    """A connection that will hold ``runs`` locked: a drain's batch blocks on its first
    statement, inside its transaction."""
    with psycopg.connect(libpq_url(db_url)) as conn:
        yield conn
        conn.rollback()


def test_a_drain_stuck_in_its_batch_is_cancelled_after_the_timeout_and_its_batch_rolls_back(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
    runs_table_locked: psycopg.Connection,
) -> None:
    events = 50
    run = seed_many(Session, events)
    timeout = 1.0
    worker = celery_processes.start_worker(concurrency=1, OUTBOX_SHUTDOWN_TIMEOUT=str(timeout))
    runs_table_locked.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
    celery_processes.call("outbox.drain_run", str(run))
    wait_until(lambda: blocked_drains(runs_table_locked) == 1, 60, "the drain to block")

    took = stop_time(worker, bound=timeout + 60)

    assert took >= timeout, took  # it waited the timeout for the drain, then cancelled it
    logs = celery_processes.logs()
    assert logs.count(f"drains still running {timeout:g}s after the shutdown began") == 1
    assert db_state(Session, run) == (1, 0, events)  # the batch rolled back: nothing marked
    assert stream_seqs(redis_client, settings.stream_prefix, run) == []

    runs_table_locked.rollback()
    celery_processes.start_worker()
    celery_processes.call("outbox.dispatch")
    wait_until(lambda: db_state(Session, run) == (events + 1, events, 0), 60, "the run")
    assert stream_seqs(redis_client, settings.stream_prefix, run) == list(range(1, events + 1))
    print(f"stopped {took:.2f}s after SIGTERM with a {timeout:g}s timeout")


def blocked_drains(conn: psycopg.Connection) -> int:
    """Sessions of the test database waiting for a lock (the drain stuck behind ours)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0
