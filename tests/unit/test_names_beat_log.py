"""Beat's error for a due task it cannot send: one line when the broker is down, the traceback
otherwise (no services: the broker is a closed port, or Kombu's in-memory transport). The
records are the real ones, logged by celery.beat's own code path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import schedule

from tasks import logs
from tasks.celery_app import _broker_connection_errors

CLOSED_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


class Lines(logging.Handler):
    """Keeps what beat's logger writes, formatted as a handler would (traceback included)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(self.format(record).splitlines())


@pytest.fixture
def beat_log() -> Iterator[Lines]:
    """Beat's logger with the outbox's filter installed, as beat's logging set-up does."""
    log = logging.getLogger(logs.BEAT_LOGGER)
    handler, saved = Lines(), (log.filters[:], log.level)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    logs.shorten_beat_send_errors(_broker_connection_errors())
    yield handler
    log.removeHandler(handler)
    log.filters[:], log.level = saved


def send_due(broker_url: str, args: tuple[Any, ...] = ()) -> None:
    """Have a scheduler of an app on ``broker_url`` send one due entry, as beat's tick does."""
    app = Celery("beat-probe", broker=broker_url, set_as_current=False)
    # Beat's sends retry a few times before they give up: keep that short here.
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}
    app.conf.broker_connection_timeout = 1
    scheduler = Scheduler(app, lazy=True)
    task = ScheduleEntry(
        name="outbox-dispatch", task="outbox.dispatch", schedule=schedule(1.0), args=args, app=app
    )
    try:
        scheduler.apply_entry(task)
    finally:
        app.close()


def test_a_dispatch_beat_cannot_send_because_the_broker_is_down_is_one_line(
    beat_log: Lines,
) -> None:
    send_due(CLOSED_BROKER)

    errors = [line for line in beat_log.lines if not line.startswith("INFO")]
    [line] = errors
    assert line.startswith("ERROR Couldn't apply scheduled task outbox-dispatch: ")
    assert line.endswith("(the broker is unreachable; beat sends it again when it is next due)")


def test_a_dispatch_beat_cannot_send_for_another_reason_keeps_its_traceback(
    beat_log: Lines,
) -> None:
    # JSON cannot hold an object: a bug to read, not an outage.
    send_due("memory://", args=(object(),))

    text = "\n".join(beat_log.lines)
    assert "Couldn't apply scheduled task outbox-dispatch" in text
    assert "Traceback (most recent call last)" in text
