"""Crashes and sink failures: nothing lost, nothing duplicated, failing runs parked."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import RunOutbox
from tasks import Status, drain_outbox_for_run, drain_outbox_once, resume
from tasks.errors import PublishError, SinkUnavailable
from tasks.pg import SqlStore
from tasks.redis_sink import RedisStreamSink, stream_key
from tasks.settings import Settings
from tasks.sink import Entry, PublishOutcome
from tests.helpers import db_state, seed, stream_seqs, unreachable_redis


class SimulatedCrash(Exception):
    """The process died after publishing and before committing."""


class PublishThenCrash(RedisStreamSink):
    """Publishes for real (the first ``upto`` entries), then crashes before the commit."""

    def __init__(self, real: RedisStreamSink, upto: int | None = None) -> None:
        super().__init__(real.client, real.prefix)
        self.upto = upto

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        super().publish(entries[: self.upto])
        raise SimulatedCrash


def _outbox_row(Session: sessionmaker[Session], run_id: object) -> RunOutbox:
    with Session() as session:
        return session.scalars(select(RunOutbox).where(RunOutbox.run_id == run_id)).one()


@pytest.mark.parametrize("upto", [None, 3], ids=["whole-batch", "part-of-batch"])
def test_a_crash_between_publish_and_commit_then_a_new_drain_leaves_each_event_once(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
    upto: int | None,
) -> None:
    [run_id] = seed(Session, events=6)

    with pytest.raises(SimulatedCrash):
        drain_outbox_for_run(
            run_id,
            session_factory=Session,
            publisher=PublishThenCrash(publisher, upto),
            settings=settings,
        )
    assert db_state(Session, run_id) == (1, 0, 6)  # rolled back: nothing marked
    published_before = stream_seqs(redis_client, settings.stream_prefix, run_id)
    assert published_before == list(range(1, (upto or 6) + 1))

    result = drain_outbox_for_run(
        run_id, session_factory=Session, publisher=publisher, settings=settings
    )

    # `published` counts what the sink added; what the crashed drain had added is reported apart.
    already = len(published_before)
    assert (result.status, result.published, result.already_present) == (
        Status.DRAINED,
        6 - already,
        already,
    )
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4, 5, 6]
    assert db_state(Session, run_id) == (7, 6, 0)


def test_a_refused_publish_is_recorded_and_the_run_parked_after_max_attempts(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=2)
    key = stream_key(settings.stream_prefix, run_id)
    redis_client.set(key, "not a stream")  # every XADD to it fails with WRONGTYPE
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}

    for attempt in (1, 2):
        with pytest.raises(PublishError, match="WRONGTYPE"):
            drain_outbox_for_run(run_id, **kwargs)
        row = _outbox_row(Session, run_id)
        assert (row.status, row.attempts, row.next_seq) == ("active", attempt, 1)
        assert "WRONGTYPE" in (row.last_error or "")
    parked = drain_outbox_for_run(run_id, **kwargs)  # max_attempts is 3 in the tests
    assert parked.status == Status.STALLED
    assert "WRONGTYPE" in (parked.error or "")
    assert SqlStore(Session).find_pending(10) == []  # dispatch leaves it alone
    assert drain_outbox_for_run(run_id, **kwargs).status == Status.STALLED

    redis_client.delete(key)
    assert resume([run_id], session_factory=Session) == [run_id]
    row = _outbox_row(Session, run_id)
    assert (row.status, row.attempts, row.last_error) == ("active", 0, None)
    resumed = drain_outbox_for_run(run_id, **kwargs)
    assert (resumed.status, resumed.published) == (Status.DRAINED, 2)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2]


def test_one_failing_run_does_not_hold_back_the_others_in_a_pass(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    bad, *good = seed(Session, runs=4, events=3)
    redis_client.set(stream_key(settings.stream_prefix, bad), "not a stream")

    result = drain_outbox_once(session_factory=Session, publisher=publisher, settings=settings)

    assert (result.status, result.published, result.runs, result.failed) == (
        Status.MORE,
        9,
        4,
        1,
    )
    for run_id in good:
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3]
    assert db_state(Session, bad) == (1, 0, 3)
    assert _outbox_row(Session, bad).attempts == 1


def test_an_unreachable_sink_raises_a_transient_error_notes_it_and_loses_nothing(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=3)
    down = RedisStreamSink(unreachable_redis(), settings.stream_prefix)

    with pytest.raises(SinkUnavailable, match="Redis unavailable"):
        drain_outbox_for_run(run_id, session_factory=Session, publisher=down, settings=settings)

    assert db_state(Session, run_id) == (1, 0, 3)
    row = _outbox_row(Session, run_id)
    assert (row.status, row.attempts) == ("active", 0)  # an outage never parks a run
    assert "Redis unavailable" in (row.last_error or "")
    result = drain_outbox_for_run(
        run_id, session_factory=Session, publisher=publisher, settings=settings
    )
    assert (result.status, result.published) == (Status.DRAINED, 3)
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3]


def test_the_publisher_reloads_its_script_after_the_server_forgets_it(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    first, second = seed(Session, runs=2, events=2)
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}
    drain_outbox_for_run(first, **kwargs)
    # What a Redis restart does to the script cache; only this publisher's script is affected
    # (a SCRIPT FLUSH would touch other users of a shared server).
    publisher._script.sha = "0" * 40

    result = drain_outbox_for_run(second, **kwargs)

    assert (result.status, result.published) == (Status.DRAINED, 2)
    assert stream_seqs(redis_client, settings.stream_prefix, second) == [1, 2]
