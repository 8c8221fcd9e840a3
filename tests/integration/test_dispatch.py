"""Dispatch against the real broker: at most one queued drain per run, whatever beat does."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tasks import app, drain_run, runtime, sql
from tasks.dispatch import dispatch_pending
from tests.helpers import append, seed


@pytest.fixture
def queue(key_space: str, redis_client: redis.Redis) -> Iterator[str]:
    name = f"{key_space}queue"
    yield name
    redis_client.delete(f"_kombu.binding.{name}")


def _queued_run_ids(client: redis.Redis, queue: str) -> list[str]:
    """The run ids of the drain messages waiting in ``queue``, read without consuming them."""
    run_ids = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["task"] == "outbox.drain_run"
        run_ids.append(body[0][0])
    return run_ids


def test_dispatch_never_queues_a_second_drain_for_a_run_that_has_one_queued(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
    queue: str,
) -> None:
    runs = seed(Session, runs=3, events=2)
    app.conf.task_always_eager = False  # this test talks to the real broker

    with app.connection_for_write(outbox.settings.redis_url) as connection:

        def enqueue(run_id: uuid.UUID) -> None:
            drain_run.apply_async(args=[str(run_id)], queue=queue, connection=connection)

        def dispatch() -> tuple[int, int]:
            result = dispatch_pending(Session, outbox.queued, enqueue, limit=100)
            return result.found, result.enqueued

        assert dispatch() == (3, 3)
        assert dispatch() == (3, 0)  # beat ticks again before any worker took a message
        assert sorted(_queued_run_ids(redis_client, queue)) == sorted(map(str, runs))

        # A worker takes the first message and drains that run: nothing left to queue for it.
        taken = json.loads(redis_client.rpop(queue))  # type: ignore[arg-type]
        taken_run = json.loads(base64.b64decode(taken["body"]))[0][0]
        assert drain_run(taken_run)["status"] == "drained"  # a direct call runs in this process
        assert dispatch() == (2, 0)

        # New events for the drained run: its mark was released when its drain started.
        append(Session, uuid.UUID(taken_run), 1)
        assert dispatch() == (3, 1)
        assert sorted(_queued_run_ids(redis_client, queue)) == sorted(map(str, runs))


def test_dispatch_finds_pending_runs_through_the_partial_index(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
) -> None:
    seed(Session, runs=3, events=2)
    with Session() as session, session.begin():
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            session.execute(text(f"EXPLAIN {sql.FIND_PENDING.text}"), {"limit": 10}).scalars()
        )
    assert "ix_run_events_pending" in plan
