"""The fault paths against the real services: a sink out of memory, a run id that comes back,
a kicked drain that fails, a kick against endpoints that are down or never answer."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import Run, RunOutbox, append_event, create_run
from tasks import Fault, Status, app, drain_outbox_for_run, drain_run, resume, runtime
from tasks.redis_sink import RedisStreamSink, read_stream, stream_key
from tasks.settings import Settings
from tasks.sink import Entry, PublishOutcome
from tests.helpers import append, db_state, seed, stream_seqs
from tests.servers import RedisServer, black_hole, free_port, redis_server


def outbox_row(Session: sessionmaker[Session], run_id: uuid.UUID) -> RunOutbox:
    with Session() as session:
        return session.scalars(select(RunOutbox).where(RunOutbox.run_id == run_id)).one()


@pytest.fixture
def tiny_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis that evicts nothing: once over its memory limit it refuses writes."""
    with redis_server(tmp_path, "--maxmemory-policy", "noeviction") as server:
        yield server


def test_a_sink_out_of_memory_parks_no_run_and_everything_is_published_once_it_recovers(
    Session: sessionmaker[Session], settings: Settings, tiny_redis: RedisServer
) -> None:
    client = tiny_redis.client()
    sink = RedisStreamSink(client, settings.stream_prefix)
    runs = seed(Session, runs=4, events=3)
    client.config_set("maxmemory", "1")  # a tiny limit, below what it holds: writes get OOM
    kwargs = {"session_factory": Session, "publisher": sink, "settings": settings}

    for _ in range(settings.max_attempts + 2):  # more tries than it takes to park a run
        for run_id in runs:
            with pytest.raises(Exception, match="maxmemory"):
                drain_outbox_for_run(run_id, **kwargs)

    for run_id in runs:
        row = outbox_row(Session, run_id)
        assert (row.status, row.attempts, row.next_seq) == ("active", 0, 1)
        assert "OutOfMemoryError" in (row.last_error or "")
    client.config_set("maxmemory", "0")
    for run_id in runs:
        result = drain_outbox_for_run(run_id, **kwargs)
        assert (result.status, result.published) == (Status.DRAINED, 3)
        assert stream_seqs(client, settings.stream_prefix, run_id) == [1, 2, 3]


def test_a_run_deleted_and_created_again_with_its_id_is_parked_not_silently_skipped(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    run_id = uuid.uuid4()
    with Session() as session, session.begin():
        create_run(session, run_id)
        append_event(session, run_id, "first.life", {"n": 1})
        append_event(session, run_id, "first.life", {"n": 2})
    kwargs = {"session_factory": Session, "publisher": publisher, "settings": settings}
    drain_outbox_for_run(run_id, **kwargs)
    with Session() as session, session.begin():
        session.execute(delete(Run).where(Run.id == run_id))
    with Session() as session, session.begin():  # the application reuses the id
        create_run(session, run_id)
        append_event(session, run_id, "second.life", {"n": 1})
        append_event(session, run_id, "second.life", {"n": 2})

    result = drain_outbox_for_run(run_id, **kwargs)

    assert (result.status, result.fault, result.published) == (Status.STALLED, Fault.CONFLICT, 0)
    assert "CONFLICT entry 1-0 holds another event" in (result.error or "")
    assert db_state(Session, run_id) == (1, 0, 2)  # nothing marked published
    entries = read_stream(redis_client, settings.stream_prefix, run_id)
    assert [e.type for e in entries] == ["first.life", "first.life"]
    row = outbox_row(Session, run_id)
    assert (row.status, row.last_error) == ("stalled", result.error)
    # The operator moves the old stream away and resumes: the new events reach the stream.
    key = stream_key(settings.stream_prefix, run_id)
    redis_client.rename(key, f"{key}:first-life")
    assert resume([run_id], session_factory=Session) == [run_id]
    again = drain_outbox_for_run(run_id, **kwargs)
    assert (again.status, again.published) == (Status.DRAINED, 2)
    assert [e.type for e in read_stream(redis_client, settings.stream_prefix, run_id)] == [
        "second.life",
        "second.life",
    ]


class FailsOnce(RedisStreamSink):
    """The real sink, except that its first publish raises ``error`` (a bug, a time limit)."""

    def __init__(self, real: RedisStreamSink, error: BaseException) -> None:
        super().__init__(real.client, real.prefix)
        self.error: BaseException | None = error

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return super().publish(entries)


def test_a_kicked_drain_that_fails_unexpectedly_puts_its_runs_back_and_frees_the_mark(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    publisher: RedisStreamSink,
) -> None:
    failing = FailsOnce(publisher, RuntimeError("a bug in the middle of the drain"))
    current = runtime.configure(
        settings, session_factory=Session, redis_client=redis_client, sink=failing
    )
    first, second = seed(Session, runs=2, events=0)

    append(Session, first, 2, kick=True)  # eager: the kick runs the drain, which fails

    members = {uuid.UUID(m.decode()) for m in redis_client.smembers(current.kicked.members)}
    assert members == {first}  # the run it took is back in the set
    assert not redis_client.exists(current.kicked.mark)  # and nothing wedges the next kick
    assert db_state(Session, first) == (1, 0, 2)
    # The next kick (from a producer whose kicks are not paused) drains both runs.
    runtime.configure(settings, session_factory=Session, redis_client=redis_client)
    append(Session, second, 1, kick=True)
    assert stream_seqs(redis_client, settings.stream_prefix, first) == [1, 2]
    assert stream_seqs(redis_client, settings.stream_prefix, second) == [1]


@pytest.fixture
def broker_off() -> Iterator[None]:
    """Celery sends for real (not eagerly) within the test; the broker URL is set by the test."""
    saved = app.conf.broker_url
    app.conf.task_always_eager = False
    yield
    app.conf.update(task_always_eager=True, broker_url=saved)


def commit_seconds(Session: sessionmaker[Session], run_id: uuid.UUID, n: int, kick: bool) -> float:
    """Seconds ``n`` one-event transactions take, each kicking the run if ``kick``."""
    start = time.perf_counter()
    for _ in range(n):
        with Session() as session, session.begin():
            append_event(session, run_id, "timed", {}, kick=kick)
    return time.perf_counter() - start


@pytest.mark.parametrize("endpoint", ["unreachable", "black-holed"])
@pytest.mark.parametrize("which", ["sink", "broker"])
def test_a_kick_costs_a_producer_little_whatever_state_redis_or_the_broker_is_in(
    Session: sessionmaker[Session],
    settings: Settings,
    broker_off: None,
    which: str,
    endpoint: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with black_hole() as hole:
        bad = f"redis://127.0.0.1:{hole.port if endpoint == 'black-holed' else free_port()}/0"
        app.conf.broker_url = bad if which == "broker" else settings.redis_url
        sink_url = bad if which == "sink" else settings.redis_url
        runtime.configure(
            dataclasses.replace(settings, redis_url=sink_url), session_factory=Session
        )
        [run_id] = seed(Session, events=0)
        n = 40
        baseline = commit_seconds(Session, run_id, n, kick=False)

        kicked = commit_seconds(Session, run_id, n, kick=True)

    # The first kick pays the kick's timeout once; the rest are skipped for the pause.
    extra = kicked - baseline
    assert extra < settings.kick_timeout * 4 + baseline, (kicked, baseline)
    assert caplog.text.count("could not kick a drain") == 1
    assert db_state(Session, run_id) == (1, 0, 2 * n)  # every commit went through


def test_an_unreachable_sink_noted_by_a_drain_shows_in_the_shared_health_record(
    Session: sessionmaker[Session], settings: Settings, redis_client: redis.Redis
) -> None:
    down = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    runtime.configure(down, session_factory=Session)
    [run_id] = seed(Session, events=1)

    result = drain_run(str(run_id))

    assert (result["status"], result["fault"], result["published"]) == ("more", "outage", 0)
    with Session() as session:
        down_since, last_error = session.execute(
            text("SELECT down_since, last_error FROM sink_health")
        ).one()
    assert down_since is not None
    assert "Redis unavailable" in last_error
