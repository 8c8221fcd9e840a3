"""Start-up and outage lines of real processes: a worker that will never drain says so, and
beat says in one line that it could not send a dispatch while its broker is down."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.settings import Settings
from tasks.testing.workers import Workers
from tests.helpers import wait_until
from tests.servers import redis_server

pytestmark = pytest.mark.e2e

NEVER_DRAINS = "does not consume the outbox queue"


def test_a_worker_that_does_not_consume_the_outbox_queue_says_in_one_line_it_never_drains(
    celery_processes: Workers,
) -> None:
    worker = celery_processes.start_worker(options=["--queues=other"])

    [line] = [line for line in worker.read_log().splitlines() if NEVER_DRAINS in line]
    assert f"the outbox queue '{celery_processes.queue}' (it consumes other)" in line
    assert "will never drain" in line
    assert f"Start it with -Q other,{celery_processes.queue}, or without -Q" in line


def test_a_worker_that_consumes_the_outbox_queue_does_not_warn(
    celery_processes: Workers,
) -> None:
    worker = celery_processes.start_worker()

    assert NEVER_DRAINS not in worker.read_log()


def test_beat_logs_one_line_per_dispatch_it_cannot_send_while_the_broker_is_down(
    settings: Settings, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as broker:
        workers = Workers(settings, "names-beat-queue", tmp_path, broker.url)
        try:
            beat = workers.start_beat(interval=0.2)
            wait_until(lambda: "Sending due task outbox-dispatch" in beat.read_log(), 30, "a tick")
            broker.stop()
            wait_until(
                lambda: beat.read_log().count("Couldn't apply scheduled task") >= 2,
                60,
                "two dispatches beat could not send",
            )
            # A line may still be half written as the condition held: wait for its end.
            wait_until(lambda: beat.read_log().endswith("\n"), 10, "the last line's end")
            log = beat.read_log()
        finally:
            workers.stop()

    failures = [line for line in log.splitlines() if "Couldn't apply scheduled task" in line]
    assert all("the broker is unreachable" in line for line in failures), failures
    assert "Traceback" not in log
    assert "Message Error" not in log  # Celery's own prefix: the record was rewritten
