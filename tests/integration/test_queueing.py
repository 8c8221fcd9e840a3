"""Queueing drains on the real broker: dispatch and kicks never queue two drains of one run."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import json
import uuid

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import append_event
from tasks import dispatch, drain_kicked, drain_run, runtime, sql
from tasks.redis_marks import KickedSet
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings
from tests.helpers import append, db_state, seed, stream_seqs, unreachable_redis, wait_until


def queued_drains(client: redis.Redis, queue: str) -> list[tuple[str, list[str]]]:
    """The drain messages waiting in ``queue`` as (task, run ids), read without consuming."""
    drains = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # kombu pushes left, pops right
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        task = message["headers"]["task"]
        if task == "outbox.drain_run":
            drains.append((task, [args[0]]))
        else:  # drain_runs takes a list of runs; drain_kicked takes none
            drains.append((task, args[0] if args else []))
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


def kicked_runs(kicked: KickedSet) -> list[str]:
    return sorted(member.decode() for member in kicked.client.smembers(kicked.members))


def test_a_kick_after_commit_adds_each_run_once_and_queues_one_drain_and_none_before(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    broker_queue: str,
    redis_client: redis.Redis,
) -> None:
    first, second = seed(Session, runs=2, events=0)
    with Session() as session, session.begin():
        for run_id in (first, second, first, first):
            append_event(session, run_id, "kicked", {}, kick=True)
        session.flush()
        assert queued_drains(redis_client, broker_queue) == []
        assert kicked_runs(outbox.kicked) == []

    assert queued_drains(redis_client, broker_queue) == [("outbox.drain_kicked", [])]
    assert kicked_runs(outbox.kicked) == sorted([str(first), str(second)])


def test_kicks_coalesce_into_one_queued_drain_until_it_has_drained_them_all(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    broker_queue: str,
    redis_client: redis.Redis,
) -> None:
    runs = seed(Session, runs=3, events=0)
    for run_id in runs:  # three producers' transactions, one after the other
        append(Session, run_id, 2, kick=True)
    assert queued_drains(redis_client, broker_queue) == [("outbox.drain_kicked", [])]

    # A worker runs the queued drain (a direct call runs here): every kicked run is drained.
    assert drain_kicked() == {
        "runs": 3,
        "published": 6,
        "already_present": 0,
        "statuses": {"drained": 3},
    }
    for run_id in runs:
        assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2]
    assert kicked_runs(outbox.kicked) == []
    # It cleared the mark when the set was empty, so the next kick queues the next drain.
    append(Session, runs[0], 1, kick=True)
    assert [task for task, _ in queued_drains(redis_client, broker_queue)] == [
        "outbox.drain_kicked",
        "outbox.drain_kicked",
    ]


def test_a_kick_while_the_kicked_drain_runs_joins_its_work_and_queues_nothing(
    outbox: runtime.Runtime,
) -> None:
    kicked, ttl = outbox.kicked, outbox.settings.queued_ttl
    first, second = uuid.uuid4(), uuid.uuid4()
    assert kicked.add([first], ttl)  # the mark was clear: this kick queues the drain
    assert kicked.take(50) == [first]  # the drain is running

    assert not kicked.add([second], ttl)  # a producer commits meanwhile: no second task,
    assert kicked.wait(5)  # but the running drain is woken (it may be waiting for more)
    assert not kicked.finish()  # and may not stop yet
    assert kicked.take(50) == [second]
    assert not kicked.wait(0.01)  # nobody kicked since
    assert kicked.finish()  # now the set is empty and the mark clear
    assert kicked.add([first], ttl)  # the next kick queues a drain again


def test_a_kicked_drain_waiting_for_more_takes_the_next_kick_without_a_new_task(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    broker_queue: str,
) -> None:
    lingering = dataclasses.replace(settings, kick_linger=2.0)
    runtime.configure(lingering, session_factory=Session, redis_client=redis_client)
    first, second = seed(Session, runs=2, events=0)
    append(Session, first, 1, kick=True)
    assert queued_drains(redis_client, broker_queue) == [("outbox.drain_kicked", [])]

    with concurrent.futures.ThreadPoolExecutor(1) as worker:  # a worker runs the queued drain
        running = worker.submit(drain_kicked)
        wait_until(
            lambda: stream_seqs(redis_client, settings.stream_prefix, first) == [1],
            30,
            "the first kicked run to be drained",
        )
        append(Session, second, 1, kick=True)  # while the drain waits for more
        report = running.result(timeout=60)

    assert report == {"runs": 2, "published": 2, "already_present": 0, "statuses": {"drained": 2}}
    assert stream_seqs(redis_client, settings.stream_prefix, second) == [1]
    assert queued_drains(redis_client, broker_queue) == [("outbox.drain_kicked", [])]


def test_one_transaction_may_kick_more_runs_than_one_script_call_takes(
    outbox: runtime.Runtime,
) -> None:
    runs = [uuid.uuid4() for _ in range(10_000)]  # Lua's unpack() stops near 8,000 values

    assert outbox.kicked.add(runs, 30)

    assert len(kicked_runs(outbox.kicked)) == 10_000
    assert not outbox.kicked.add(runs[:1], 30)


def test_a_kicked_drain_takes_bounded_groups_and_queues_a_successor_for_the_rest(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    broker_queue: str,
) -> None:
    small = dataclasses.replace(settings, group_size=2, max_batches=2)
    current = runtime.configure(small, session_factory=Session, redis_client=redis_client)
    runs = seed(Session, runs=5, events=1)
    assert current.kicked.add(runs, small.queued_ttl)  # as five kicks would

    assert drain_kicked() == {
        "runs": 4,
        "published": 4,
        "already_present": 0,
        "statuses": {"drained": 4},
    }

    assert len(kicked_runs(current.kicked)) == 1
    assert queued_drains(redis_client, broker_queue) == [("outbox.drain_kicked", [])]
    drain_kicked()
    assert sum(len(stream_seqs(redis_client, small.stream_prefix, r)) for r in runs) == 5


def test_a_kicked_drain_that_cannot_reach_the_sink_puts_its_runs_back_and_releases_its_mark(
    Session: sessionmaker[Session], settings: Settings, redis_client: redis.Redis
) -> None:
    down = RedisStreamSink(unreachable_redis(), settings.stream_prefix)
    current = runtime.configure(
        settings, session_factory=Session, redis_client=redis_client, sink=down
    )
    [run_id] = seed(Session, events=2)
    assert current.kicked.add([run_id], settings.queued_ttl)

    report = drain_kicked.delay().get()

    assert report["statuses"] == {"more": 1}
    assert "Redis unavailable" in report["error"]
    assert kicked_runs(current.kicked) == [str(run_id)]
    assert db_state(Session, run_id) == (1, 0, 2)
    # The mark is released: the next kick queues a drain of the set again.
    assert current.kicked.add([run_id], settings.queued_ttl) is True
    # The outage is recorded once for the deployment, and on the run.
    with Session() as session:
        down_since = session.scalar(text("SELECT down_since FROM sink_health"))
        error = session.scalar(text("SELECT last_error FROM run_outbox"))
    assert down_since is not None
    assert "Redis unavailable" in error


def test_a_rolled_back_transaction_kicks_nothing(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    broker_queue: str,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session:
        with session.begin():
            append_event(session, run_id, "kicked", {}, kick=True)
            session.rollback()
        with session.begin():  # the same session, a later transaction without kicks
            append_event(session, run_id, "not kicked", {})

    assert queued_drains(redis_client, broker_queue) == []
    assert kicked_runs(outbox.kicked) == []


def test_kicks_are_off_in_the_harness_and_follow_the_environment_when_not_given(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    broker_queue: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet, kicked = seed(Session, runs=2, events=0)
    append(Session, quiet, 1)
    assert queued_drains(redis_client, broker_queue) == []

    monkeypatch.setenv("OUTBOX_KICK_ON_COMMIT", "1")
    append(Session, kicked, 1)
    assert queued_drains(redis_client, broker_queue) == [("outbox.drain_kicked", [])]
    assert kicked_runs(outbox.kicked) == [str(kicked)]


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
    # Both the workers' client and the kick's own one (built from the URL) find nothing there.
    nowhere = dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")
    runtime.configure(nowhere, session_factory=Session, redis_client=unreachable_redis())
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


def test_finding_pending_runs_reads_no_table_that_grows_with_finished_runs(
    Session: sessionmaker[Session], settings: Settings
) -> None:
    seed(Session, runs=3, events=2)
    with Session() as session, session.begin():  # 5,000 runs whose events are all published
        session.execute(
            text(
                "INSERT INTO runs (id, last_seq) SELECT gen_random_uuid(), 1"
                " FROM generate_series(1, 5000)"
            )
        )
        session.execute(
            text(
                "INSERT INTO run_outbox (run_id, next_seq) SELECT id, 2 FROM runs"
                " WHERE id NOT IN (SELECT run_id FROM run_outbox)"
            )
        )
        session.execute(text("ANALYZE runs, run_outbox, run_events"))
    with Session() as session:
        plan = "\n".join(
            session.execute(
                text(f"EXPLAIN {sql.FIND_PENDING.text}"), {"limit": settings.dispatch_limit}
            ).scalars()
        )
    # One primary key probe per pending run, not a scan of every run's cursor.
    assert "Seq Scan on run_outbox" not in plan, plan
    assert "Index Scan using pk_run_outbox" in plan, plan
