"""Log lines, service-free: the drain's line, the JSON format, and the idle dispatch filter."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from models.errors import ConfigError
from tasks import jobs, logs
from tasks.drain import DrainResult, Fault, Limits, Status
from tasks.outages import OutageLog, SinkGate
from tasks.queueing import DrainQueue
from tasks.settings import CelerySettings
from tasks.sink import InMemorySink
from tests.fakes import (
    InMemoryHealth,
    InMemoryKicked,
    InMemoryMarks,
    InMemoryStore,
    RecordingSender,
)

RUN_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
RUN_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


def test_a_drain_of_one_run_is_one_line_with_its_seqs_counts_duration_and_status() -> None:
    results = [DrainResult(RUN_A, Status.DRAINED, published=498, already_present=2)]

    message, fields = logs.drain_line(results, {RUN_A: (3, 502)}, 0.4213)

    assert message == (
        f"drain of run {RUN_A}: seqs 3-502 published (498 added, 2 already present) "
        "in 0.421s; drained"
    )
    assert fields == {
        "runs": 1,
        "added": 498,
        "already_present": 2,
        "duration_seconds": 0.4213,
        "statuses": {"drained": 1},
        "run_ids": [str(RUN_A)],
        "seqs": {str(RUN_A): [3, 502]},
    }


def test_a_drain_of_a_few_runs_names_each_with_its_seqs_and_counts_the_statuses() -> None:
    results = [
        DrainResult(RUN_A, Status.MORE, published=5),
        DrainResult(RUN_B, Status.DRAINED, published=1),
        DrainResult(uuid.uuid4(), Status.LOCKED),
    ]

    message, fields = logs.drain_line(results, {RUN_A: (1, 5), RUN_B: (7, 7)}, 0.02)

    assert message == (
        f"drain of 3 runs: {RUN_A} seqs 1-5, {RUN_B} seq 7 published (6 added, "
        "0 already present) in 0.020s; drained 1, locked 1, more 1"
    )
    assert fields["statuses"] == {"drained": 1, "locked": 1, "more": 1}
    assert fields["seqs"] == {str(RUN_A): [1, 5], str(RUN_B): [7, 7]}


def test_a_drain_of_many_runs_gives_their_count_not_their_ids() -> None:
    runs = [uuid.uuid4() for _ in range(50)]
    results = [DrainResult(run, Status.DRAINED, published=2) for run in runs]

    message, fields = logs.drain_line(results, {run: (1, 2) for run in runs}, 1.5)

    assert message == (
        "drain of 50 runs: seqs of 50 runs published (100 added, 0 already present) "
        "in 1.500s; drained 50"
    )
    assert "run_ids" not in fields
    assert "seqs" not in fields
    assert str(runs[0]) not in message


def test_a_drain_that_moved_nothing_says_so_and_quotes_its_first_error_on_the_same_line() -> None:
    error = "Redis unavailable: ConnectionError:\n  Error 111 connecting"
    results = [DrainResult(RUN_A, Status.MORE, error=error, fault=Fault.OUTAGE)]

    message, fields = logs.drain_line(results, {}, 0.001)

    assert message == (
        f"drain of run {RUN_A}: nothing published (0 added, 0 already present) in 0.001s; "
        "more; Redis unavailable: ConnectionError: Error 111 connecting"
    )
    assert "\n" not in message
    assert fields["error"] == "Redis unavailable: ConnectionError: Error 111 connecting"


def test_published_seqs_notes_the_range_each_run_took_over_batches_and_not_refused_runs() -> None:
    store = InMemoryStore()
    taken, refused = store.seed(runs=2, events=4)
    sink = InMemorySink()
    sink.refuse(refused, "WRONGTYPE")
    recorder = logs.PublishedSeqs(sink)

    with store.batch() as batch:
        recorder.publish(batch.read({taken: 1, refused: 1}, per_run=2, max_bytes=10_000))
        recorder.publish(batch.read({taken: 3}, per_run=2, max_bytes=10_000))

    assert recorder.ranges == {taken: (1, 4)}
    assert [entry.seq for entry in sink.entries(taken)] == [1, 2, 3, 4]


def worker(store: InMemoryStore, **limits: int) -> jobs.Worker:
    """A worker over in-memory collaborators."""
    marks, kicked = InMemoryMarks(store.clock), InMemoryKicked()
    return jobs.Worker(
        store=store,
        sink=InMemorySink(),
        queue=DrainQueue(marks, kicked, RecordingSender(), group_size=2, ttl=30),
        gate=SinkGate(InMemoryHealth(store.clock)),
        cursor=marks,
        kicked=kicked,
        limits=Limits(**limits),
        kick_linger=0.01,
        database=OutageLog("database", clock=store.clock),
    )


def test_a_drain_task_logs_exactly_one_info_line_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = InMemoryStore()
    [run] = store.seed(runs=1, events=7)

    with caplog.at_level(logging.INFO, logger="tasks.jobs"):
        jobs.drain_group(worker(store, batch_size=3), [run])

    [record] = [r for r in caplog.records if r.name == "tasks.jobs"]
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        f"drain of run {run}: seqs 1-7 published (7 added, 0 already present) in "
    )
    assert record.getMessage().endswith("s; drained")
    assert vars(record)["seqs"] == {str(run): [1, 7]}
    assert vars(record)["added"] == 7


def json_line(record: logging.LogRecord, **context: str) -> dict[str, Any]:
    line = logs.JsonFormatter(lambda: context).format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_json_line_holds_time_level_logger_process_message_and_the_extra_fields() -> None:
    log = logging.getLogger("tests.json")
    record = log.makeRecord(
        "tests.json",
        logging.WARNING,
        __file__,
        1,
        "sink %s for %ds",
        ("down", 3),
        None,
        extra={"runs": 2, "run_id": RUN_A, "seqs": {"a": [1, 2]}},
    )
    record.created = 1_790_000_000.5

    line = json_line(record, task="outbox.drain_run", task_id="t-1")

    assert line == {
        "time": "2026-09-21T14:13:20.500+00:00",
        "level": "WARNING",
        "logger": "tests.json",
        "process": "MainProcess",
        "message": "sink down for 3s",
        "runs": 2,
        "run_id": str(RUN_A),  # not JSON: written as text
        "seqs": {"a": [1, 2]},
        "task": "outbox.drain_run",
        "task_id": "t-1",
    }


def test_a_json_line_carries_the_traceback_as_one_field() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.getLogger("tests.json").makeRecord(
            "tests.json", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )

    line = json_line(record)

    assert line["message"] == "failed"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: bad\nvalue")


def celery_line(msg: str, data: dict[str, Any], logger: str, level: int = logging.INFO) -> Any:
    """A record as Celery's task lines make it: the context as args and as ``extra['data']``."""
    return logging.getLogger(logger).makeRecord(
        logger, level, __file__, 1, msg, (data,), None, extra={"data": data}
    )


RECEIVED = logs.RECEIVED_LINE
SUCCEEDED = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"


@pytest.fixture
def info_level() -> Iterator[None]:
    """Celery's loggers at INFO, as a worker started with --loglevel INFO has them."""
    names = ("celery.worker.strategy", "celery.app.trace", "celery.beat")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("info_level")
@pytest.mark.parametrize(
    ("record", "kept"),
    [
        pytest.param(
            lambda: celery_line(
                RECEIVED, {"name": "outbox.dispatch", "id": "1"}, "celery.worker.strategy"
            ),
            False,
            id="dispatch received",
        ),
        pytest.param(
            lambda: celery_line(
                SUCCEEDED,
                {"name": "outbox.dispatch", "return_value": "{'found': 0, 'enqueued': 0}"},
                "celery.app.trace",
            ),
            False,
            id="idle dispatch succeeded",
        ),
        pytest.param(
            lambda: celery_line(
                SUCCEEDED,
                {"name": "outbox.dispatch", "return_value": "{'found': 3, 'enqueued': 0}"},
                "celery.app.trace",
            ),
            False,
            id="dispatch whose runs were queued already",
        ),
        pytest.param(
            lambda: celery_line(
                SUCCEEDED,
                {"name": "outbox.dispatch", "return_value": "{'found': 2, 'enqueued': 2}"},
                "celery.app.trace",
            ),
            True,
            id="dispatch that queued drains",
        ),
        pytest.param(
            lambda: celery_line(
                SUCCEEDED,
                {
                    "name": "outbox.dispatch",
                    "return_value": "{'found': 0, 'enqueued': 0, 'unavailable': 'sink'}",
                },
                "celery.app.trace",
            ),
            True,
            id="dispatch that met an outage",
        ),
        pytest.param(
            lambda: celery_line(
                RECEIVED, {"name": "outbox.drain_run", "id": "1"}, "celery.worker.strategy"
            ),
            True,
            id="another task received",
        ),
        pytest.param(
            lambda: celery_line(
                "Task %(name)s[%(id)s] %(description)s: %(exc)s",
                {
                    "name": "outbox.dispatch",
                    "id": "1",
                    "description": "raised expected",
                    "exc": "InvalidTaskArguments('outbox.dispatch takes no arguments')",
                },
                "celery.app.trace",
            ),
            True,
            id="dispatch refused its arguments",
        ),
        pytest.param(
            lambda: celery_line(
                SUCCEEDED,
                {"name": "outbox.dispatch", "return_value": "{'found': 0, 'enqueued': 0}"},
                "celery.app.trace",
                logging.WARNING,
            ),
            True,
            id="a warning",
        ),
        pytest.param(
            lambda: logging.getLogger("celery.beat").makeRecord(
                "celery.beat",
                logging.INFO,
                __file__,
                1,
                "Scheduler: Sending due task %s (%s)",
                ("outbox-dispatch", "outbox.dispatch"),
                None,
            ),
            True,
            id="beat sending dispatch: its sign of life",
        ),
    ],
)
def test_the_idle_dispatch_filter_drops_only_the_lines_of_ticks_that_queued_nothing(
    record: Any, kept: bool
) -> None:
    assert logs.QuietIdleDispatch().filter(record()) is kept


def test_the_lines_the_filter_knows_are_the_ones_this_celery_logs() -> None:
    assert RECEIVED == LOG_RECEIVED
    assert SUCCEEDED == LOG_SUCCESS


def test_the_idle_dispatch_filter_keeps_everything_when_the_logger_is_at_debug() -> None:
    log = logging.getLogger("celery.worker.strategy")
    saved = log.level
    log.setLevel(logging.DEBUG)
    try:
        record = celery_line(RECEIVED, {"name": "outbox.dispatch", "id": "1"}, log.name)
        assert logs.QuietIdleDispatch().filter(record) is True
    finally:
        log.setLevel(saved)


def test_installing_the_idle_dispatch_filter_twice_installs_it_once() -> None:
    loggers = [logging.getLogger(name) for name in logs.QUIETED_LOGGERS]
    saved = [list(log.filters) for log in loggers]
    try:
        logs.quiet_idle_dispatch()
        logs.quiet_idle_dispatch()
        for log in loggers:
            assert sum(isinstance(f, logs.QuietIdleDispatch) for f in log.filters) == 1
    finally:
        for log, filters in zip(loggers, saved, strict=True):
            log.filters = filters


def test_the_log_format_is_text_unless_set_to_json_and_anything_else_is_refused() -> None:
    assert CelerySettings.from_env({}).log_format == "text"
    assert CelerySettings.from_env({"OUTBOX_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError) as refused:
        CelerySettings.from_env({"OUTBOX_LOG_FORMAT": "yaml"})
    assert str(refused.value) == "OUTBOX_LOG_FORMAT must be text or json, got 'yaml'"
