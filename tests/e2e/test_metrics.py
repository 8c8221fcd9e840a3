"""Metrics end to end: a real prefork worker counts into PROMETHEUS_MULTIPROC_DIR, and a real
`outbox metrics` process serves those counts with the database's gauges over HTTP."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from tasks.redis_sink import stream_key
from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.workers import Workers
from tests.helpers import db_state, seed, wait_until
from tests.servers import RedisServer, free_port, redis_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class MetricsProcess:
    """`outbox metrics --port PORT` as a subprocess, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        command = [str(Path(sys.executable).with_name("outbox")), "metrics"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=processes.PROJECT_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, 60, "`outbox metrics` to answer")

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        with contextlib.suppress(OSError):
            self.scrape()
            return True
        return False

    def scrape(self) -> Samples:
        """GET /metrics; every sample by name and labels."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def sink_server(tmp_path: Path) -> Iterator[RedisServer]:
    """The sink's Redis, a private one the test stops; the broker stays the suite's Redis."""
    directory = tmp_path / "sink"
    directory.mkdir()
    with redis_server(directory) as server:
        yield server


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def test_a_scrape_shows_the_workers_counts_and_the_databases_gauges_exactly(
    Session: sessionmaker[Session],
    settings: Settings,
    tmp_path: Path,
    sink_server: RedisServer,
    celery_processes: Workers,
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "OUTBOX_REDIS_URL": sink_server.url}
    runs = seed(Session, runs=3, events=4)
    celery_processes.start_worker(concurrency=2, **env)
    metrics = MetricsProcess(celery_processes.env | env, tmp_path / "metrics.log")
    try:
        # Nothing drained yet: the gauges, and no count yet (no pool process has counted).
        before = metrics.scrape()
        assert value(before, "outbox_pending_events") == 12
        assert value(before, "outbox_pending_runs") == 3
        assert value(before, "outbox_oldest_pending_age_seconds") > 0
        assert ("outbox_events_published_total", frozenset()) not in before

        # One dispatch queues one drain of the three runs.
        celery_processes.call("outbox.dispatch")
        wait_until(
            lambda: metrics.scrape().get(("outbox_events_published_total", frozenset())) == 12,
            60,
            "the worker's counts",
        )
        drained = metrics.scrape()
        assert value(drained, "outbox_events_published_total") == 12
        assert value(drained, "outbox_events_already_present_total") == 0
        assert value(drained, "outbox_drain_runs_total", status="drained") == 3
        assert value(drained, "outbox_drain_runs_total", status="stalled") == 0
        assert value(drained, "outbox_drain_duration_seconds_count") == 1
        assert value(drained, "outbox_database_up") == 1
        assert value(drained, "outbox_pending_events") == 0
        assert value(drained, "outbox_pending_runs") == 0
        assert value(drained, "outbox_oldest_pending_age_seconds") == 0
        assert value(drained, "outbox_stalled_runs") == 0
        assert value(drained, "outbox_sink_down") == 0
        assert value(drained, "outbox_sink_down_seconds") == 0
        assert all(db_state(Session, run) == (5, 4, 0) for run in runs)

        # A run whose entry 1-0 holds another event: its drain parks it at once.
        [parked] = seed(Session, runs=1, events=2)
        committed = time.monotonic()
        sink = sink_server.client()
        sink.xadd(stream_key(settings.stream_prefix, parked), {"type": "x"}, id="1-0")
        celery_processes.call("outbox.dispatch")
        wait_until(
            lambda: metrics.scrape().get(("outbox_stalled_runs", frozenset())) == 1,
            60,
            "the run to be parked",
        )
        wait_until(
            lambda: value(metrics.scrape(), "outbox_drain_runs_total", status="stalled") == 1,
            30,
            "the parked run's count",
        )
        waited = time.monotonic() - committed  # before the scrape, which reads the age after
        stalled = metrics.scrape()
        assert value(stalled, "outbox_pending_events") == 2
        assert value(stalled, "outbox_pending_runs") == 1
        # Its events are older than the time since their commit (created_at is the start of
        # the producer's transaction).
        assert value(stalled, "outbox_oldest_pending_age_seconds") >= waited
        assert value(stalled, "outbox_events_published_total") == 12
        assert value(stalled, "outbox_drain_duration_seconds_count") == 2
        assert value(stalled, "outbox_sink_down") == 0

        # The sink goes away: the next dispatch finds it down and records the outage.
        sink_server.stop()
        celery_processes.call("outbox.dispatch")
        wait_until(
            lambda: metrics.scrape().get(("outbox_sink_down", frozenset())) == 1,
            60,
            "the outage to show",
        )
        down = metrics.scrape()
        assert value(down, "outbox_sink_down_seconds") >= 0
        assert value(down, "outbox_database_up") == 1
        assert value(down, "outbox_stalled_runs") == 1
    finally:
        metrics.stop()
    # SIGTERM stops it cleanly.
    output = metrics.log.read_text()
    assert metrics.process.returncode == 0, output
    assert output.rstrip().endswith("stopped"), output
    assert "Traceback" not in output
    assert "Traceback" not in celery_processes.logs()
