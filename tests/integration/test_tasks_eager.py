"""The Celery tasks in eager mode (the test default): same code path, run in the caller."""

from __future__ import annotations

import dataclasses
import datetime
import uuid

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import InvalidRunId, RunOutbox
from tasks import app, dispatch, drain_run, drain_runs, runtime
from tasks.redis_sink import stream_key
from tests.helpers import db_state, seed, stream_seqs


def test_the_test_harness_runs_celery_eagerly_without_beat_or_worker() -> None:
    assert app.conf.task_always_eager is True
    assert app.conf.task_eager_propagates is True


def test_drain_run_returns_its_dict_via_delay_apply_and_a_direct_call(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
) -> None:
    first, second, third = seed(Session, runs=3, events=2)
    prefix = outbox.settings.stream_prefix

    via_delay = drain_run.delay(str(first)).get()
    via_apply = drain_run.apply(args=[str(second)]).get()
    direct = drain_run(str(third))

    for run_id, result in ((first, via_delay), (second, via_apply), (third, direct)):
        assert result == {
            "run_id": str(run_id),
            "status": "drained",
            "published": 2,
            "already_present": 0,
        }
        assert stream_seqs(redis_client, prefix, run_id) == [1, 2]


def test_drain_run_reports_missing_for_an_unknown_run(outbox: runtime.Runtime) -> None:
    unknown = str(uuid.uuid4())
    assert drain_run.delay(unknown).get() == {
        "run_id": unknown,
        "status": "missing",
        "published": 0,
        "already_present": 0,
    }


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "123"])
def test_drain_run_refuses_a_malformed_id_and_writes_nothing(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis, bad_id: str
) -> None:
    [run_id] = seed(Session, events=1)
    with pytest.raises(InvalidRunId, match="run id must be a UUID"):
        drain_run.delay(bad_id)
    assert db_state(Session, run_id) == (1, 0, 1)
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == []


def test_a_drain_that_hits_its_batch_limit_continues_until_the_run_is_drained(
    Session: sessionmaker[Session],
    settings: object,
    redis_client: redis.Redis,
) -> None:
    small = dataclasses.replace(settings, batch_size=2, max_batches=1)  # type: ignore[type-var]
    current = runtime.configure(small, session_factory=Session, redis_client=redis_client)
    [run_id] = seed(Session, events=7)

    first = drain_run.delay(str(run_id)).get()

    # The first task publishes one batch and reports "more"; the drains it queued in turn
    # (run at once, since Celery is eager) publish the rest.
    assert first == {"run_id": str(run_id), "status": "more", "published": 2, "already_present": 0}
    assert stream_seqs(redis_client, current.settings.stream_prefix, run_id) == list(range(1, 8))
    assert db_state(Session, run_id) == (8, 7, 0)


def test_dispatch_queues_one_drain_per_pending_run_and_they_drain_everything(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
) -> None:
    runs = seed(Session, runs=4, events=3)
    done = seed(Session, runs=1, events=1)[0]
    drain_run(str(done))

    result = dispatch.delay().get()

    assert result == {"found": 4, "enqueued": 4}
    for run_id in runs:
        assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2, 3]
    assert dispatch.delay().get() == {"found": 0, "enqueued": 0}


def database_clock(Session: sessionmaker[Session]) -> datetime.datetime:
    with Session() as session:
        return session.execute(text("SELECT clock_timestamp()")).scalar_one()


def test_a_refused_drain_records_the_attempt_and_dispatch_retries_it_after_its_delay(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=2)
    key = stream_key(outbox.settings.stream_prefix, run_id)
    redis_client.set(key, "not a stream")

    # No Celery retry: the attempt is counted in the database, with the time of the next one.
    before = database_clock(Session)
    result = drain_run.delay(str(run_id)).get()
    after = database_clock(Session)

    assert (result["status"], result["fault"]) == ("more", "refused")
    assert "WRONGTYPE" in result["error"]
    with Session() as session:
        row = session.get_one(RunOutbox, run_id)
        assert (row.status, row.attempts) == ("active", 1)
    # The first retry waits up to a second from the drain (full jitter: maybe almost none).
    assert row.retry_at is not None
    assert before <= row.retry_at <= after + datetime.timedelta(seconds=1)
    assert db_state(Session, run_id) == (1, 0, 2)

    # Dispatch leaves the run alone until its retry time, then queues it again.
    redis_client.delete(key)
    with Session() as session, session.begin():
        session.execute(text("UPDATE run_outbox SET retry_at = now() + interval '1 hour'"))
    assert dispatch.delay().get() == {"found": 0, "enqueued": 0}
    with Session() as session, session.begin():
        session.execute(text("UPDATE run_outbox SET retry_at = now() - interval '1 second'"))
    assert dispatch.delay().get() == {"found": 1, "enqueued": 1}
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2]


def test_drain_runs_drains_a_group_and_reports_its_statuses(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    first, second = seed(Session, runs=2, events=3)
    unknown = str(uuid.uuid4())

    result = drain_runs.delay([str(first), str(second), unknown]).get()

    assert result == {
        "runs": 3,
        "published": 6,
        "already_present": 0,
        "statuses": {"drained": 2, "missing": 1},
    }
    for run_id in (first, second):
        assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2, 3]
