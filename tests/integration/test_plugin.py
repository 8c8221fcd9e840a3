"""The pytest plugin's fixtures against real PostgreSQL and Redis, used as an application would
use them: a database and a key space per test, step-wise drains that return what they added,
the sink read back, and the Celery app eager with every change put back afterwards."""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import URL, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import RunOutbox, append_event, create_run, kicks
from tasks import drain_run, runtime
from tasks.celery_app import app
from tasks.drain import Status
from tasks.errors import SinkUnavailable
from tasks.settings import Settings
from tasks.sink import StreamEntry
from tasks.testing import NotIdle, assert_events
from tasks.testing.drainer import Drainer
from tasks.testing.eager import RecordingKicker, eager_outbox
from tasks.testing.plugin import NO_REDIS_URL
from tasks.testing.sinks import SINK_KINDS, MemoryStreams, Streams

pytest_plugins = ["pytester"]


def seed(Session: sessionmaker[Session], events: int = 3) -> uuid.UUID:
    """One run with ``events`` events, committed."""
    with Session() as session, session.begin():
        run = create_run(session)
        for n in range(events):
            append_event(session, run.id, "seeded", {"n": n})
    return run.id


def seeded(*numbers: int) -> list[tuple[str, object]]:
    return [("seeded", {"n": n}) for n in numbers]


def test_each_test_gets_a_migrated_database_of_its_own_copied_from_the_template(
    outbox_database: URL,
    outbox_template: URL,
    outbox_session_factory: sessionmaker[Session],
) -> None:
    assert str(outbox_database.database).startswith("outbox_test_db_")
    assert outbox_database.database != outbox_template.database
    # One template per session, or per xdist worker (gw0, gw1, ...), named after it.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    tag = f"{worker}_" if worker else ""
    assert re.fullmatch(f"outbox_test_tmpl_{tag}[0-9a-f]{{12}}", str(outbox_template.database))
    with outbox_session_factory() as session:
        assert session.scalar(text("SELECT current_database()")) == outbox_database.database
        assert session.scalar(text("SELECT count(*) FROM alembic_version")) == 1
        assert session.scalar(select(func.count()).select_from(RunOutbox)) == 0


@pytest.mark.parametrize("outbox_sink_kind", SINK_KINDS)
def test_draining_a_run_returns_its_result_and_the_entries_it_added_on_either_sink(
    outbox_sink_kind: str,
    outbox_session_factory: sessionmaker[Session],
    outbox_drain: Drainer,
    outbox_sink: Streams,
) -> None:
    run_id = seed(outbox_session_factory)

    drained = outbox_drain.run(run_id)

    assert outbox_sink.kind == outbox_sink_kind
    assert (drained.result.status, drained.result.published) == (Status.DRAINED, 3)
    assert_events(drained.entries(run_id), seeded(0, 1, 2))
    assert drained.entries(run_id) == outbox_sink.entries(run_id)
    again = outbox_drain.run(run_id)
    assert (again.result.status, again.published, again.added) == (Status.DRAINED, 0, {})


def test_an_entry_already_in_the_stream_counts_as_present_not_as_added(
    outbox_session_factory: sessionmaker[Session],
    outbox_drain: Drainer,
    outbox_sink: Streams,
) -> None:
    run_id = seed(outbox_session_factory)
    # As after a crash between publishing and committing: entry 1 is in the stream already.
    with outbox_session_factory() as session:
        first = session.execute(
            text(
                "SELECT run_id, id, seq, type, CAST(payload AS text) AS payload FROM run_events"
                " WHERE run_id = :run_id AND seq = 1"
            ),
            {"run_id": run_id},
        ).one()
    outbox_sink.publisher.publish([first])

    drained = outbox_drain.run(run_id)

    assert (drained.result.published, drained.result.already_present) == (2, 1)
    assert [entry.seq for entry in drained.entries(run_id)] == [2, 3]
    assert_events(outbox_sink.entries(run_id), seeded(0, 1, 2))


class TestPasses:
    """One pass, and passes until idle, with batches of 2 events and 1 batch per drain."""

    @pytest.fixture
    def outbox_settings(self, outbox_settings: Settings) -> Settings:
        return dataclasses.replace(outbox_settings, batch_size=2, max_batches=1)

    def test_one_pass_publishes_a_batch_of_every_pending_run_and_says_more_remains(
        self, outbox_session_factory: sessionmaker[Session], outbox_drain: Drainer
    ) -> None:
        first, second = seed(outbox_session_factory), seed(outbox_session_factory)

        drained = outbox_drain.once()

        assert (drained.result.status, drained.result.runs) == (Status.MORE, 2)
        assert_events(drained.entries(first), seeded(0))
        assert_events(drained.entries(second), seeded(0))
        assert drained.published == drained.result.published == 2

    def test_until_idle_passes_until_nothing_is_pending_and_returns_every_pass(
        self,
        outbox_session_factory: sessionmaker[Session],
        outbox_drain: Drainer,
        outbox_sink: Streams,
    ) -> None:
        first, second = seed(outbox_session_factory), seed(outbox_session_factory, events=1)

        drained = outbox_drain.until_idle()

        # Pass 1 shares its batch of 2: one event of each run. Pass 2 has the first run alone.
        assert [p.status for p in drained.result] == [Status.MORE, Status.DRAINED]
        assert [p.published for p in drained.result] == [2, 2]
        assert_events(drained.entries(first), seeded(0, 1, 2))
        assert_events(drained.entries(second), seeded(0))
        assert drained.entries(first) == outbox_sink.entries(first)

    def test_until_idle_gives_up_after_as_many_passes_as_it_was_given(
        self, outbox_session_factory: sessionmaker[Session], outbox_drain: Drainer
    ) -> None:
        seed(outbox_session_factory, events=5)  # 3 passes of 2 events at most

        with pytest.raises(NotIdle, match="runs still had pending events after 2 passes"):
            outbox_drain.until_idle(max_passes=2)


@pytest.mark.parametrize("outbox_sink_kind", ["memory"])
def test_until_idle_retries_a_refused_run_until_it_is_parked(
    outbox_sink_kind: str,
    outbox_session_factory: sessionmaker[Session],
    outbox_settings: Settings,
    outbox_drain: Drainer,
    outbox_sink: MemoryStreams,
) -> None:
    run_id = seed(outbox_session_factory)
    outbox_sink.memory.refuse(run_id, "WRONGTYPE Operation against a key")

    drained = outbox_drain.until_idle()

    assert len(drained.result) == outbox_settings.max_attempts
    assert [p.failed for p in drained.result] == [1] * outbox_settings.max_attempts
    assert drained.result[-1].status is Status.DRAINED
    assert drained.added == {}
    with outbox_session_factory() as session:
        assert session.get(RunOutbox, run_id).status == "stalled"  # type: ignore[union-attr]


@pytest.mark.parametrize("outbox_sink_kind", ["memory"])
def test_until_idle_gives_up_at_once_naming_the_outage_when_the_sink_is_down(
    outbox_sink_kind: str,
    outbox_session_factory: sessionmaker[Session],
    outbox_drain: Drainer,
    outbox_sink: MemoryStreams,
) -> None:
    seed(outbox_session_factory)
    outbox_sink.memory.unavailable = "Redis unavailable: connection refused"

    with pytest.raises(NotIdle, match="the sink is unavailable: Redis unavailable"):
        outbox_drain.until_idle()
    with pytest.raises(SinkUnavailable):
        outbox_drain.run(seed(outbox_session_factory))


@pytest.mark.parametrize("outbox_sink_kind", ["memory"])
def test_a_test_on_the_memory_sink_needs_no_redis(
    outbox_sink_kind: str,
    request: pytest.FixtureRequest,
    outbox_settings: Settings,
    outbox_session_factory: sessionmaker[Session],
    outbox_drain: Drainer,
) -> None:
    run_id = seed(outbox_session_factory, events=1)

    assert_events(outbox_drain.run(run_id).entries(run_id), seeded(0))
    assert outbox_settings.redis_url == NO_REDIS_URL
    assert not {"outbox_redis_server", "outbox_redis"} & set(request.fixturenames)


def test_the_eager_fixture_runs_tasks_in_the_caller_and_only_records_kicks(
    outbox_session_factory: sessionmaker[Session],
    outbox_eager: runtime.Runtime,
    outbox_kicker: RecordingKicker,
    outbox_sink: Streams,
) -> None:
    with outbox_session_factory() as session, session.begin():
        run = create_run(session)
        append_event(session, run.id, "placed", {"order": 1}, kick=True)
        append_event(session, run.id, "paid", {"order": 1}, kick=True)

    assert outbox_kicker.kicks == [[run.id]]  # once per transaction, and queued nothing
    assert outbox_sink.entries(run.id) == []
    assert runtime.current() is outbox_eager
    result = drain_run.delay(str(run.id)).get()
    assert (result["status"], result["published"]) == ("drained", 2)
    assert_events(outbox_sink.entries(run.id), [("placed", {"order": 1}), ("paid", {"order": 1})])


def test_leaving_eager_outbox_puts_the_app_the_kicker_and_the_runtime_back(
    outbox_settings: Settings,
    outbox_session_factory: sessionmaker[Session],
) -> None:
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    mine = RecordingKicker()
    previous = kicks.set_kicker(mine)
    app.conf.update(task_always_eager=False, task_eager_propagates=False)
    try:
        with eager_outbox(
            outbox_settings, session_factory=outbox_session_factory, sink=MemoryStreams().publisher
        ) as inside:
            assert (app.conf.task_always_eager, app.conf.task_eager_propagates) == (True, True)
            assert kicks.kicker() is not mine
            assert runtime.current() is inside

        assert (app.conf.task_always_eager, app.conf.task_eager_propagates) == (False, False)
        assert kicks.kicker() is mine
        assert runtime.current() is not inside
    finally:
        app.conf.update(task_always_eager=saved[0], task_eager_propagates=saved[1])
        kicks.set_kicker(previous)
        runtime.reset()


def test_the_worker_and_beat_of_a_failing_test_are_stopped_before_the_next_test(
    pytester: pytest.Pytester,
    outbox_database_server: URL,
    outbox_redis_server: str,
    tmp_path: Path,
) -> None:
    groups = tmp_path / "groups"
    pytester.makepyfile(
        f"""
        import os

        def test_fails_with_a_worker_and_beat_running(outbox_worker):
            worker = outbox_worker.start_worker(concurrency=1)
            beat = outbox_worker.start_beat()
            with open({str(groups)!r}, "w") as out:
                out.write(f"{{worker.pid}} {{beat.pid}}")
            assert False, "the test fails with both running"

        def test_the_next_test_runs(outbox_database):
            pass
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:randomly")

    result.assert_outcomes(passed=1, failed=1)
    for group in map(int, groups.read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)  # signal 0 only asks: is any process of the group left?


def test_stream_entries_are_read_back_with_seq_type_and_payload(
    outbox_session_factory: sessionmaker[Session],
    outbox_drain: Drainer,
    outbox_sink: Streams,
) -> None:
    run_id = seed(outbox_session_factory, events=1)
    outbox_drain.run(run_id)

    [entry] = outbox_sink.entries(run_id)

    assert isinstance(entry, StreamEntry)
    assert (entry.seq, entry.type, entry.payload) == (1, "seeded", '{"n": 0}')
