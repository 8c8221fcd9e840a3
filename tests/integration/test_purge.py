"""Retention against real PostgreSQL and Redis: what the purge deletes, what it keeps, how it
works in bounded batches, and that producers, drains and run deletes neither wait for it nor
lose anything to it.

Events are made "old" by moving their ``published_at`` back in time, as the clock would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from click.testing import Result
from sqlalchemy import Engine, delete, func, inspect, make_url, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import Run, RunEvent, RunOutbox, append_event
from tasks import Status, drain_outbox_for_run, drain_outbox_once, runtime, sql
from tasks import purge as retention
from tasks.cli import PURGE_ROUND
from tasks.outbox import purge as purge_task
from tasks.pg import SqlPurgeStore, SqlStore
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings
from tests.helpers import append, cli, seed, stream_seqs

DAY = 86400.0
WEEK = 7 * DAY
DOWN_DATABASE = "postgresql+psycopg://someone:s3cret@127.0.0.1:1/nowhere"
SUMMARY = re.compile(r"deleted (\d+) events published before \S+, in (\d+) batches\n")


def _summary(result: Result) -> tuple[int, int]:
    """(deleted, batches) from the purge command's last line, which must be all it printed."""
    match = SUMMARY.fullmatch(result.stdout)
    assert match is not None, result.output
    return int(match[1]), int(match[2])


def _drain(
    Session: sessionmaker[Session], publisher: RedisStreamSink, settings: Settings, *runs: uuid.UUID
) -> None:
    for run_id in runs:
        result = drain_outbox_for_run(
            run_id, session_factory=Session, publisher=publisher, settings=settings
        )
        assert result.status is Status.DRAINED


def _age(
    Session: sessionmaker[Session], run_id: uuid.UUID, seqs: range | list[int], days: float
) -> None:
    """Move the published (and created) time of the run's events ``days`` back."""
    with Session() as session, session.begin():
        session.execute(
            text(
                "UPDATE run_events"
                " SET published_at = published_at - make_interval(secs => :seconds),"
                " created_at = created_at - make_interval(secs => :seconds)"
                " WHERE run_id = :run_id AND seq = ANY(:seqs)"
            ),
            {"seconds": days * DAY, "run_id": run_id, "seqs": list(seqs)},
        )


def _seqs(Session: sessionmaker[Session], run_id: uuid.UUID) -> list[int]:
    """The seqs of the run's events still in the table."""
    with Session() as session:
        query = select(RunEvent.seq).where(RunEvent.run_id == run_id).order_by(RunEvent.seq)
        return list(session.scalars(query))


def _counters(Session: sessionmaker[Session], run_id: uuid.UUID) -> tuple[int, int]:
    """(runs.last_seq, run_outbox.next_seq): the producers' counter and the drain's cursor."""
    with Session() as session:
        return session.get_one(Run, run_id).last_seq, session.get_one(RunOutbox, run_id).next_seq


def _events(Session: sessionmaker[Session]) -> int:
    with Session() as session:
        return int(session.scalar(select(func.count()).select_from(RunEvent)) or 0)


@pytest.fixture
def store(Session: sessionmaker[Session]) -> SqlPurgeStore:
    return SqlPurgeStore(Session)


def test_the_purge_deletes_published_events_older_than_the_cutoff_and_keeps_every_other(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
    store: SqlPurgeStore,
) -> None:
    mixed, partly_published, rewound = seed(Session, runs=3, events=10)
    # mixed: all published, 1..6 eight days ago, 7..10 just now.
    _drain(Session, publisher, settings, mixed)
    _age(Session, mixed, range(1, 7), days=8)
    # partly_published: 1..4 published eight days ago; 5..10 pending, created 30 days ago.
    first_four = dataclasses.replace(settings, batch_size=4, max_batches=1)
    drain_outbox_for_run(
        partly_published, session_factory=Session, publisher=publisher, settings=first_four
    )
    _age(Session, partly_published, range(1, 5), days=8)
    _age(Session, partly_published, range(5, 11), days=30)
    # rewound: all published eight days ago, but its cursor was moved back to 4.
    _drain(Session, publisher, settings, rewound)
    _age(Session, rewound, range(1, 11), days=8)
    with Session() as session, session.begin():
        session.execute(
            text("UPDATE run_outbox SET next_seq = 4 WHERE run_id = :r"), {"r": rewound}
        )

    result = retention.purge_older_than(store, WEEK)

    assert (result.deleted, result.batches, result.more, result.error) == (
        6 + 4 + 3,
        1,
        False,
        None,
    )
    assert _seqs(Session, mixed) == [7, 8, 9, 10]
    assert _seqs(Session, partly_published) == [5, 6, 7, 8, 9, 10]
    assert _seqs(Session, rewound) == [4, 5, 6, 7, 8, 9, 10]
    assert [_counters(Session, r) for r in (mixed, partly_published, rewound)] == [
        (10, 11),
        (10, 5),
        (10, 4),
    ]
    prefix = settings.stream_prefix  # streams are the consumers' business: untouched
    assert stream_seqs(redis_client, prefix, mixed) == list(range(1, 11))
    assert stream_seqs(redis_client, prefix, partly_published) == [1, 2, 3, 4]


def test_a_fully_purged_run_keeps_its_counter_and_cursor_and_its_next_event_gets_the_next_seq(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
    store: SqlPurgeStore,
) -> None:
    [run_id] = seed(Session, events=5)
    _drain(Session, publisher, settings, run_id)
    _age(Session, run_id, range(1, 6), days=8)

    assert retention.purge_older_than(store, WEEK).deleted == 5
    assert (_seqs(Session, run_id), _counters(Session, run_id)) == ([], (5, 6))

    with Session() as session, session.begin():
        assert append_event(session, run_id, "after.purge", {}).seq == 6
    _drain(Session, publisher, settings, run_id)

    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2, 3, 4, 5, 6]
    assert (_seqs(Session, run_id), _counters(Session, run_id)) == ([6], (6, 7))


def test_the_purge_works_in_bounded_batches_oldest_first_and_the_next_one_goes_on(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    store: SqlPurgeStore,
) -> None:
    first, second = seed(Session, runs=2, events=5)
    _drain(Session, publisher, settings, first, second)
    for seq in range(1, 6):  # ten ages, one per event: first's are the oldest, by whole days
        _age(Session, first, [seq], days=20 - seq)
        _age(Session, second, [seq], days=14 - seq)
    cutoff = store.cutoff(WEEK)

    bounded = retention.purge(store, cutoff, batch_size=4, max_batches=2)

    assert (bounded.deleted, bounded.batches, bounded.more) == (8, 2, True)
    assert (_seqs(Session, first), _seqs(Session, second)) == ([], [4, 5])

    rest = retention.purge(store, cutoff, batch_size=4, max_batches=2)

    assert (rest.deleted, rest.batches, rest.more) == (2, 1, False)
    assert _events(Session) == 0


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    outbox: runtime.Runtime,
) -> None:
    [run_id] = seed(Session, events=6)
    _drain(Session, publisher, settings, run_id)
    _age(Session, run_id, range(1, 5), days=8)
    append(Session, run_id, 2)  # pending

    result = cli("purge", "--dry-run")

    assert (result.exit_code, result.stderr) == (0, "")
    assert re.fullmatch(
        r"would delete 4 events published before \S+ \(dry run: none deleted\)\n", result.stdout
    )
    assert _seqs(Session, run_id) == list(range(1, 9))


def test_the_purge_command_deletes_what_is_older_than_the_retention_or_older_than_given(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    outbox: runtime.Runtime,
) -> None:
    [run_id] = seed(Session, events=6)
    _drain(Session, publisher, settings, run_id)
    _age(Session, run_id, [1, 2], days=8)
    _age(Session, run_id, [3, 4], days=2)

    by_retention = cli("purge")
    by_option = cli("purge", "--older-than", "36h")

    assert (by_retention.exit_code, by_retention.stderr, _summary(by_retention)) == (0, "", (2, 1))
    assert (by_option.exit_code, by_option.stderr, _summary(by_option)) == (0, "", (2, 1))
    assert _seqs(Session, run_id) == [5, 6]


def test_a_long_purge_command_reports_its_progress_on_stderr(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    outbox: runtime.Runtime,
) -> None:
    [run_id] = seed(Session, events=250)
    _drain(Session, publisher, settings, run_id)
    _age(Session, run_id, range(1, 251), days=1)

    result = cli("purge", "--older-than", "1h", "--batch-size", "1")

    # A progress line after each round of PURGE_ROUND batches that left more.
    assert PURGE_ROUND == 100
    assert result.exit_code == 0
    assert result.stderr == (
        "deleted 100 events so far, in 100 batches...\n"
        "deleted 200 events so far, in 200 batches...\n"
    )
    # The last round's final batch finds nothing left: 251 batches for 250 events.
    assert _summary(result) == (250, 251)
    assert _events(Session) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--older-than", "7x"],
            "Invalid value for '--older-than': must be a duration such as 90, 30s, 15m, 12h "
            "or 7d, got '7x'.",
            id="unknown unit",
        ),
        pytest.param(
            ["--older-than", "-1d"],
            "Invalid value for '--older-than': must be a duration such as 90, 30s, 15m, 12h "
            "or 7d, got '-1d'.",
            id="negative",
        ),
        pytest.param(
            ["--older-than", "0s"],
            "Invalid value for '--older-than': must be a duration longer than zero, got '0s'.",
            id="zero",
        ),
        pytest.param(
            ["--older-than", "36501d"],
            "Invalid value for '--older-than': must be a duration of at most 36500d, got '36501d'.",
            id="too long",
        ),
        pytest.param(
            ["--batch-size", "5001"],
            "Invalid value for '--batch-size': 5001 is not in the range 1<=x<=5000.",
            id="batch too large",
        ),
        pytest.param(
            ["--dry-run", "now"],
            "Got unexpected extra argument (now).",
            id="extra argument",
        ),
    ],
)
def test_the_purge_command_refuses_bad_input_with_one_line_exit_2_and_deletes_nothing(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    outbox: runtime.Runtime,
    args: list[str],
    message: str,
) -> None:
    [run_id] = seed(Session, events=3)
    _drain(Session, publisher, settings, run_id)
    _age(Session, run_id, range(1, 4), days=30)

    result = cli("purge", *args)

    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"Error: {message} See 'outbox purge --help'.\n"
    assert _seqs(Session, run_id) == [1, 2, 3]


def test_a_malformed_retention_setting_is_one_line_naming_it_exit_1(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.reset()
    monkeypatch.setenv("OUTBOX_DATABASE_URL", settings.database_url.render_as_string(False))
    monkeypatch.setenv("OUTBOX_RETENTION", "a week")

    result = cli("purge")

    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: OUTBOX_RETENTION must be a duration such as 90, 30s, 15m, 12h or 7d, got 'a week'\n"
    )


def test_the_purge_command_with_the_database_down_is_one_line_exit_1_without_the_password(
    settings: Settings,
) -> None:
    runtime.configure(dataclasses.replace(settings, database_url=make_url(DOWN_DATABASE)))

    result = cli("purge")

    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("Error: PostgreSQL at postgresql+psycopg://someone:***@")
    assert result.stderr.count("\n") == 1
    assert "s3cret" not in result.output


def test_the_purge_task_deletes_what_is_older_than_the_retention_setting_via_eager_celery(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    hourly = dataclasses.replace(settings, retention=3600.0)
    runtime.configure(hourly, session_factory=Session, redis_client=redis_client)
    [run_id] = seed(Session, events=5)
    _drain(Session, publisher, settings, run_id)
    _age(Session, run_id, [1, 2, 3], days=2 / 24)  # two hours ago

    result: dict[str, Any] = purge_task.delay().get()

    cutoff = dt.datetime.fromisoformat(result.pop("cutoff"))
    assert result == {"deleted": 3, "batches": 1, "more": False}
    assert dt.datetime.now(dt.UTC) - cutoff > dt.timedelta(minutes=59)
    assert _seqs(Session, run_id) == [4, 5]


def test_the_purge_task_reports_a_database_outage_instead_of_raising(settings: Settings) -> None:
    runtime.configure(dataclasses.replace(settings, database_url=make_url(DOWN_DATABASE)))

    result = purge_task.delay().get()

    assert (result["deleted"], result["unavailable"], result["cutoff"]) == (0, "database", None)
    assert result["error"].startswith("PostgreSQL unavailable: ")
    assert "s3cret" not in result["error"]


def test_the_purge_neither_waits_for_nor_deletes_under_a_drain_a_producer_or_a_run_delete(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    store: SqlPurgeStore,
) -> None:
    drained, produced, deleted = seed(Session, runs=3, events=4)
    _drain(Session, publisher, settings, drained, produced, deleted)
    for run_id in (drained, produced, deleted):
        _age(Session, run_id, range(1, 5), days=8)

    # The pool outlives the held locks: a purge that waits is released when the test fails.
    with ThreadPoolExecutor(max_workers=1) as pool, contextlib.ExitStack() as held:
        # A drain holds its run and its cursor (as between its publish and its commit).
        batch = held.enter_context(SqlStore(Session).batch())
        assert set(batch.lock([drained]).held) == {drained}
        # A producer holds its run's counter and an uncommitted event.
        producer = held.enter_context(Session())
        held.enter_context(producer.begin())
        assert append_event(producer, produced, "uncommitted", {}).seq == 5
        # A delete of a run holds the run and, through the cascade, its events.
        deleter = held.enter_context(Session())
        deleter_transaction = held.enter_context(deleter.begin())
        deleter.execute(delete(Run).where(Run.id == deleted))

        # A purge that waited for any of them would still be waiting at the deadline.
        result = pool.submit(retention.purge_older_than, store, WEEK).result(timeout=30)

        assert (result.deleted, result.more) == (8, False)  # the deleting run's rows skipped
        deleter_transaction.rollback()

    assert (_seqs(Session, drained), _seqs(Session, produced)) == ([], [5])
    assert _seqs(Session, deleted) == [1, 2, 3, 4]
    assert retention.purge_older_than(store, WEEK).deleted == 4


RUNS = 4
EVENTS = 150


def test_a_purge_racing_producers_and_drains_deletes_exactly_what_was_published_and_loses_nothing(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
    store: SqlPurgeStore,
) -> None:
    run_ids = seed(Session, runs=RUNS, events=0)
    small = dataclasses.replace(settings, batch_size=7, max_batches=2, group_size=2)
    # A cutoff in the future makes everything published fair game at once, so the purge's
    # only guards are the ones under test: published, and below the run's cursor.
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    producing = threading.Event()
    producing.set()
    purged: list[int] = []

    def produce(run_id: uuid.UUID) -> None:
        appended, size = 0, 1
        while appended < EVENTS:
            count = min(size, EVENTS - appended)
            append(Session, run_id, count)
            appended, size = appended + count, size % 5 + 1

    def drain() -> None:
        while producing.is_set():
            drain_outbox_once(session_factory=Session, publisher=publisher, settings=small)

    def purge() -> None:
        while producing.is_set() or not purged:
            purged.append(retention.purge(store, future, batch_size=5, max_batches=3).deleted)

    with ThreadPoolExecutor(max_workers=RUNS + 3) as pool:
        workers = [pool.submit(drain) for _ in range(2)] + [pool.submit(purge)]
        try:
            for producer in [pool.submit(produce, run_id) for run_id in run_ids]:
                producer.result(timeout=120)
        finally:
            producing.clear()
        for worker in workers:
            worker.result(timeout=60)  # re-raises whatever a drainer or the purge raised

    while (
        drain_outbox_once(session_factory=Session, publisher=publisher, settings=small).status
        is not Status.DRAINED
    ):
        pass
    while (rest := retention.purge(store, future, batch_size=50)).more:
        purged.append(rest.deleted)
    purged.append(rest.deleted)

    for run_id in run_ids:
        assert stream_seqs(redis_client, settings.stream_prefix, run_id) == list(
            range(1, EVENTS + 1)
        )
        assert _counters(Session, run_id) == (EVENTS, EVENTS + 1)
    assert (sum(purged), _events(Session)) == (RUNS * EVENTS, 0)
    with Session() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == RUNS


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_a_purge_batch_finds_its_rows_through_the_index_without_scanning_the_table(
    Session: sessionmaker[Session], engine: Engine, store: SqlPurgeStore
) -> None:
    # A history of 20,000 published events over 100 runs, 2 % of them older than a week.
    with Session() as session, session.begin():
        session.execute(
            text(
                """
                WITH r AS (
                    INSERT INTO runs (id, last_seq)
                    SELECT gen_random_uuid(), 200 FROM generate_series(1, 100)
                    RETURNING id
                ), o AS (
                    INSERT INTO run_outbox (run_id, next_seq) SELECT id, 201 FROM r
                )
                INSERT INTO run_events (run_id, seq, type, payload, created_at, published_at)
                SELECT r.id, s, 'bulk', '{}',
                       now() - make_interval(days => CASE WHEN s <= 4 THEN 8 ELSE 1 END),
                       now() - make_interval(days => CASE WHEN s <= 4 THEN 8 ELSE 1 END)
                FROM r CROSS JOIN generate_series(1, 200) AS s
                """
            )
        )
    with engine.connect() as connection:
        connection.execute(text("ANALYZE run_events"))
        connection.commit()
    params = {"cutoff": store.cutoff(WEEK), "batch_size": retention.BATCH_SIZE}

    for statement in (sql.PURGE_BATCH, sql.PURGE_COUNT):
        with engine.connect() as connection:
            explained = text(f"EXPLAIN (FORMAT JSON) {statement.text}")
            [plan] = connection.execute(explained, params).scalar_one()
        nodes = list(_plan_nodes(plan["Plan"]))
        scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
        assert "run_events" not in scanned, plan
        assert "ix_run_events_published_at" in {n.get("Index Name") for n in nodes}, plan

    assert retention.purge_older_than(store, WEEK).deleted == 400


def test_published_history_has_a_partial_index_by_publication_time(engine: Engine) -> None:
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("run_events")}
    published = indexes["ix_run_events_published_at"]
    assert published["column_names"] == ["published_at"]
    assert published["dialect_options"]["postgresql_where"] == "(published_at IS NOT NULL)"
