"""The drain functions against real PostgreSQL and Redis, called directly."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import redis
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from models import RunEvent, append_event
from tasks import Status, drain_outbox_for_run, drain_outbox_for_runs, drain_outbox_once
from tasks.redis_sink import RedisStreamSink, read_stream
from tasks.settings import Settings
from tests.helpers import append, db_state, seed, stream_seqs


def test_drain_publishes_every_event_once_in_seq_order_and_marks_them(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=5)

    result = drain_outbox_for_run(
        run_id, session_factory=Session, publisher=publisher, settings=settings
    )

    assert (result.status, result.published) == (Status.DRAINED, 5)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4, 5]
    assert db_state(Session, run_id) == (6, 5, 0)
    entry = read_stream(redis_client, settings.stream_prefix, run_id)[0]
    assert (entry.type, entry.payload) == ("seeded", '{"n": 1}')


def test_second_drain_of_a_drained_run_publishes_nothing(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=3)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}
    drain_outbox_for_run(run_id, **kwargs)

    again = drain_outbox_for_run(str(run_id), **kwargs)

    assert (again.status, again.published) == (Status.DRAINED, 0)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3]


def test_batch_limit_reports_more_and_the_next_drain_continues_in_order(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=7)
    small = dataclasses.replace(settings, batch_size=2, max_batches=2)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": small}

    first = drain_outbox_for_run(run_id, **kwargs)
    assert (first.status, first.published) == (Status.MORE, 4)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4]
    assert db_state(Session, run_id) == (5, 4, 3)

    second = drain_outbox_for_run(run_id, **kwargs)
    assert (second.status, second.published) == (Status.DRAINED, 3)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == list(range(1, 8))


def test_byte_limit_cuts_a_batch_short_but_always_moves_at_least_one_event(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session, session.begin():
        for n in range(4):
            append_event(session, run_id, "big", {"blob": "x" * 3000, "n": n})
    tight = dataclasses.replace(settings, batch_max_bytes=1000, max_batches=1)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": tight}

    first = drain_outbox_for_run(run_id, **kwargs)

    assert (first.status, first.published) == (Status.MORE, 1)
    for _ in range(3):
        drain_outbox_for_run(run_id, **kwargs)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4]


def test_nothing_is_published_before_the_producer_commits(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=0)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}
    with Session() as producer, producer.begin():
        append_event(producer, run_id, "pending", {})
        during = drain_outbox_for_run(run_id, **kwargs)
    after = drain_outbox_for_run(run_id, **kwargs)

    assert (during.status, during.published) == (Status.DRAINED, 0)
    assert (after.status, after.published) == (Status.DRAINED, 1)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1]


def test_unknown_run_is_missing_and_a_malformed_id_is_refused(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
) -> None:
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}

    assert drain_outbox_for_run(uuid.uuid4(), **kwargs).status == Status.MISSING
    with pytest.raises(ValueError, match="run id must be a UUID"):
        drain_outbox_for_run("not-a-uuid", **kwargs)
    with pytest.raises(ValueError, match="run id must be a UUID"):
        drain_outbox_for_run(42, **kwargs)  # type: ignore[arg-type]


def test_a_run_another_drainer_holds_is_locked_and_left_alone(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=2)
    with Session() as holder, holder.begin():
        holder.execute(text("SELECT 1 FROM run_outbox WHERE run_id = :r FOR UPDATE"), {"r": run_id})
        result = drain_outbox_for_run(
            run_id, session_factory=Session, publisher=publisher, settings=settings
        )

    assert (result.status, result.published) == (Status.LOCKED, 0)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == []


def test_drain_once_drains_every_run_with_pending_events_across_groups(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    runs = seed(Session, runs=7, events=5)
    small = dataclasses.replace(settings, group_size=3, batch_size=2)

    result = drain_outbox_once(session_factory=Session, publisher=publisher, settings=small)

    assert result.as_dict() == {
        "status": "drained",
        "published": 35,
        "already_present": 0,
        "runs": 7,
        "failed": 0,
    }
    for run_id in runs:
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4, 5]
        assert db_state(Session, run_id) == (6, 5, 0)
    again = drain_outbox_once(session_factory=Session, publisher=publisher, settings=small)
    assert (again.status, again.published, again.runs) == (Status.DRAINED, 0, 0)


def test_drain_once_reports_more_when_its_batch_limit_leaves_events(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
) -> None:
    seed(Session, runs=2, events=5)
    # One transaction of 4 events, shared by the 2 runs.
    small = dataclasses.replace(settings, batch_size=4, max_batches=1)

    result = drain_outbox_once(session_factory=Session, publisher=publisher, settings=small)

    assert (result.status, result.published, result.runs) == (Status.MORE, 4, 2)


def test_events_appended_after_a_drain_are_published_by_the_next_one(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=2)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}
    drain_outbox_for_run(run_id, **kwargs)
    append(Session, run_id, 3)

    result = drain_outbox_for_run(run_id, **kwargs)

    assert result.published == 3
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4, 5]
    with Session() as session:
        published = session.scalars(
            select(RunEvent.seq).where(RunEvent.published_at.is_not(None)).order_by(RunEvent.seq)
        ).all()
    assert published == [1, 2, 3, 4, 5]


def test_drain_runs_drains_several_runs_together_and_reports_each(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    first, second = seed(Session, runs=2, events=6)
    ghost = uuid.uuid4()
    small = dataclasses.replace(settings, batch_size=4)  # 2 events per run per transaction

    results = drain_outbox_for_runs(
        [first, str(second), ghost], session_factory=Session, publisher=publisher, settings=small
    )

    assert [(r.run_id, r.status, r.published) for r in results] == [
        (first, Status.DRAINED, 6),
        (second, Status.DRAINED, 6),
        (ghost, Status.MISSING, 0),
    ]
    for run_id in (first, second):
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == list(range(1, 7))
