"""Queueing drains on the real broker: dispatch and kicks never queue two drains of one run."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import append_event
from tasks import dispatch, drain_run, runtime, sql
from tasks.settings import Settings
from tests.helpers import append, seed, stream_seqs, unreachable_redis


def queued_drains(client: redis.Redis, queue: str) -> list[tuple[str, list[str]]]:
    """The drain messages waiting in ``queue`` as (task, run ids), read without consuming."""
    drains = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # kombu pushes left, pops right
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        task = message["headers"]["task"]
        drains.append((task, [args[0]] if task == "outbox.drain_run" else args[0]))
    return drains


def queued_runs(client: redis.Redis, queue: str) -> list[str]:
    return sorted(run for _, runs in queued_drains(client, queue) for run in runs)


def test_dispatch_never_queues_a_second_drain_for_a_run_that_has_one_queued(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
    broker_queue: str,
) -> None:
    runs = seed(Session, runs=3, events=2)

    assert dispatch() == {"found": 3, "enqueued": 3}
    assert dispatch() == {"found": 3, "enqueued": 0}  # beat ticks again before a worker runs
    assert queued_runs(redis_client, broker_queue) == sorted(map(str, runs))

    # A worker drains one of them (a direct call runs here): nothing left to queue for it.
    assert drain_run(str(runs[0]))["status"] == "drained"
    assert dispatch() == {"found": 2, "enqueued": 0}
    # New events for the drained run: its mark went when its drain started, so it is queued.
    append(Session, runs[0], 1)
    assert dispatch() == {"found": 3, "enqueued": 1}
    assert queued_runs(redis_client, broker_queue) == sorted(map(str, [*runs, runs[0]]))


def test_dispatch_queues_runs_in_groups_and_each_pass_starts_where_the_last_stopped(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    broker_queue: str,
) -> None:
    small = dataclasses.replace(settings, group_size=2, dispatch_limit=3)
    runtime.configure(small, session_factory=Session, redis_client=redis_client)
    runs = sorted(seed(Session, runs=5, events=1))

    assert dispatch() == {"found": 3, "enqueued": 3}
    # The next pass starts after the third run and wraps around to the first.
    assert dispatch() == {"found": 3, "enqueued": 2}
    assert dispatch() == {"found": 3, "enqueued": 0}  # every run has its drain queued

    assert queued_drains(redis_client, broker_queue) == [
        ("outbox.drain_runs", [str(runs[0]), str(runs[1])]),
        ("outbox.drain_run", [str(runs[2])]),
        ("outbox.drain_runs", [str(runs[3]), str(runs[4])]),
    ]


def test_a_kick_queues_one_drain_per_run_after_commit_and_none_before(
    Session: sessionmaker[Session], broker_queue: str, redis_client: redis.Redis
) -> None:
    first, second = seed(Session, runs=2, events=0)
    with Session() as session, session.begin():
        for run_id in (first, second, first, first):
            append_event(session, run_id, "kicked", {}, kick=True)
        session.flush()
        assert queued_drains(redis_client, broker_queue) == []

    assert queued_drains(redis_client, broker_queue) == [
        ("outbox.drain_runs", sorted([str(first), str(second)]))
    ]


def test_a_rolled_back_transaction_kicks_nothing(
    Session: sessionmaker[Session], broker_queue: str, redis_client: redis.Redis
) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session:
        with session.begin():
            append_event(session, run_id, "kicked", {}, kick=True)
            session.rollback()
        with session.begin():  # the same session, a later transaction without kicks
            append_event(session, run_id, "not kicked", {})

    assert queued_drains(redis_client, broker_queue) == []


def test_kicks_are_off_in_the_harness_and_follow_the_environment_when_not_given(
    Session: sessionmaker[Session],
    broker_queue: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet, kicked = seed(Session, runs=2, events=0)
    append(Session, quiet, 1)
    assert queued_drains(redis_client, broker_queue) == []

    monkeypatch.setenv("OUTBOX_KICK_ON_COMMIT", "1")
    append(Session, kicked, 1)
    assert queued_drains(redis_client, broker_queue) == [("outbox.drain_run", [str(kicked)])]


def test_a_kick_drains_the_run_as_soon_as_the_producer_commits(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = seed(Session, events=0)
    prefix = outbox.settings.stream_prefix
    with Session() as session, session.begin():
        append_event(session, run_id, "a", {}, kick=True)
        append_event(session, run_id, "b", {}, kick=True)
        session.flush()
        assert stream_seqs(redis_client, prefix, run_id) == []

    # Celery is eager here, so the kicked drain ran inside the commit.
    assert stream_seqs(redis_client, prefix, run_id) == [1, 2]


def test_a_kick_that_cannot_reach_redis_never_fails_the_producer(
    Session: sessionmaker[Session], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    down = unreachable_redis()
    runtime.configure(settings, session_factory=Session, redis_client=down)
    [run_id] = seed(Session, events=0)

    with Session() as session, session.begin():
        event = append_event(session, run_id, "committed anyway", {}, kick=True)

    assert event.seq == 1
    assert "could not kick a drain" in caplog.text


def test_dispatch_finds_pending_runs_through_the_partial_index(
    Session: sessionmaker[Session],
) -> None:
    seed(Session, runs=3, events=2)
    with Session() as session, session.begin():
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = session.execute(text(f"EXPLAIN {sql.FIND_PENDING.text}"), {"limit": 10})
        assert "ix_run_events_pending" in "\n".join(plan.scalars())
