"""Many drainers on one run, in threads and in processes, while producers keep appending."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis
from sqlalchemy import URL
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine
from tasks import Status, drain_outbox_for_run
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings
from tests.helpers import append, db_state, seed, stream_seqs

EVENTS = 300
OK_STATUSES = {Status.DRAINED, Status.MORE, Status.LOCKED}


def _produce(Session: sessionmaker[Session], run_id: uuid.UUID) -> None:
    appended = 0
    size = 1
    while appended < EVENTS:
        count = min(size, EVENTS - appended)
        append(Session, run_id, count)
        appended += count
        size = size % 5 + 1  # transactions of 1 to 5 events


def _drain_until(stop: Callable[[], bool], drain: Callable[[], Status]) -> None:
    """Drain while producers work; once they stop, drain until the run is empty."""
    while not stop():
        drain()
    while drain() is not Status.DRAINED:
        pass


def test_concurrent_thread_drains_while_appending_publish_each_event_once_in_order(
    Session: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=0)
    small = dataclasses.replace(settings, batch_size=7, max_batches=3)
    stop = threading.Event()
    statuses: set[Status] = set()

    def drain() -> Status:
        result = drain_outbox_for_run(
            run_id, session_factory=Session, publisher=publisher, settings=small
        )
        statuses.add(result.status)
        return result.status

    with ThreadPoolExecutor(max_workers=6) as pool:
        drainers = [pool.submit(_drain_until, stop.is_set, drain) for _ in range(6)]
        try:
            _produce(Session, run_id)
        finally:
            stop.set()
        for drainer in drainers:
            drainer.result(timeout=60)  # re-raises whatever a drainer raised

    assert statuses <= OK_STATUSES
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == list(range(1, EVENTS + 1))
    assert db_state(Session, run_id) == (EVENTS + 1, EVENTS, 0)


def _process_drainer(
    url: str,
    redis_url: str,
    prefix: str,
    run_id: str,
    ready: object,
    stop: object,
    results: object,
) -> None:
    """Runs in a spawned process: drain until told to stop, then report the statuses seen."""
    engine = make_engine(url)
    Session = sessionmaker(engine)
    settings = Settings(
        database_url=engine.url,
        redis_url=redis_url,
        stream_prefix=prefix,
        batch_size=5,
        max_batches=2,
    )
    publisher = RedisStreamSink(redis.Redis.from_url(redis_url), prefix)
    seen: set[str] = set()

    def drain() -> Status:
        result = drain_outbox_for_run(
            run_id, session_factory=Session, publisher=publisher, settings=settings
        )
        seen.add(result.status.value)
        return result.status

    try:
        drain()  # connected and warm before the producer starts
        ready.release()  # type: ignore[attr-defined]
        _drain_until(stop.is_set, drain)  # type: ignore[attr-defined]
        results.put(sorted(seen))  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put(f"error: {exc!r}")  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_concurrent_process_drains_while_appending_publish_each_event_once_in_order(
    Session: sessionmaker[Session],
    db_url: URL,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    [run_id] = seed(Session, events=0)
    context = multiprocessing.get_context("spawn")
    ready = context.Semaphore(0)
    stop = context.Event()
    results = context.Queue()
    args = (
        db_url.render_as_string(hide_password=False),
        settings.redis_url,
        settings.stream_prefix,
        str(run_id),
        ready,
        stop,
        results,
    )
    processes = [context.Process(target=_process_drainer, args=args) for _ in range(3)]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            assert ready.acquire(timeout=60), "a drainer process did not start"
        _produce(Session, run_id)
    finally:
        stop.set()
        reports = [results.get(timeout=90) for _ in processes]
        for process in processes:
            process.join(timeout=30)

    assert all(isinstance(report, list) for report in reports), reports
    assert {status for report in reports for status in report} <= {s.value for s in OK_STATUSES}
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert stream_seqs(redis_client, settings.stream_prefix, run_id) == list(range(1, EVENTS + 1))
    assert db_state(Session, run_id) == (EVENTS + 1, EVENTS, 0)
