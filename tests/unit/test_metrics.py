"""Metrics, service-free: the counts a drain adds, the database's gauges, serving them over HTTP,
and the settings and CLI checks around them."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from models.errors import ConfigError
from tasks import jobs, metrics
from tasks.cli import main
from tasks.drain import DrainResult, Limits, Status
from tasks.outages import OutageLog, SinkGate
from tasks.outbox import CountedKicks
from tasks.queueing import DrainQueue
from tasks.settings import check_environment
from tasks.sink import InMemorySink
from tests.fakes import (
    Clock,
    InMemoryHealth,
    InMemoryKicked,
    InMemoryMarks,
    InMemoryStore,
    RecordingSender,
)
from tests.helpers import wait_until

BACKLOG = metrics.Backlog(
    pending_events=7,
    oldest_pending_age=12.5,
    pending_runs=2,
    stalled_runs=1,
    sink_down_seconds=None,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_drain_counts_its_entries_its_runs_by_status_and_its_duration(
    registry: CollectorRegistry,
) -> None:
    meter = metrics.DrainMeter(registry)
    results = [
        DrainResult(uuid.uuid4(), Status.DRAINED, published=5, already_present=1),
        DrainResult(uuid.uuid4(), Status.MORE, published=500),
        DrainResult(uuid.uuid4(), Status.STALLED),
    ]

    meter.drained(results, 0.3)
    meter.drained(results[:1], 0.02)

    assert sample(registry, "outbox_events_published_total") == 510
    assert sample(registry, "outbox_events_already_present_total") == 2
    assert sample(registry, "outbox_drain_runs_total", status="drained") == 2
    assert sample(registry, "outbox_drain_runs_total", status="more") == 1
    assert sample(registry, "outbox_drain_runs_total", status="stalled") == 1
    assert sample(registry, "outbox_drain_runs_total", status="locked") == 0  # exists, at 0
    assert sample(registry, "outbox_drain_duration_seconds_count") == 2
    assert sample(registry, "outbox_drain_duration_seconds_sum") == pytest.approx(0.32)
    assert sample(registry, "outbox_drain_duration_seconds_bucket", le="0.025") == 1


def test_only_kicks_that_queued_no_drain_count_as_coalesced(registry: CollectorRegistry) -> None:
    meter = metrics.DrainMeter(registry)

    meter.kicked(True)
    meter.kicked(False)
    meter.kicked(False)

    assert sample(registry, "outbox_kicks_coalesced_total") == 2


def test_the_producers_queue_counts_each_kick_that_found_the_kicked_drain_queued() -> None:
    kicked = InMemoryKicked()
    plain = DrainQueue(InMemoryMarks(Clock()), kicked, RecordingSender(), group_size=2, ttl=30)
    queue = CountedKicks.of(plain)
    before = REGISTRY.get_sample_value("outbox_kicks_coalesced_total") or 0.0

    queued = [queue.kick([uuid.uuid4()]) for _ in range(3)]

    assert queued == [True, False, False]  # one drain queued; the next two kicks joined it
    assert REGISTRY.get_sample_value("outbox_kicks_coalesced_total") == before + 2


def test_a_drain_task_counts_through_the_meter_its_worker_holds(
    registry: CollectorRegistry,
) -> None:
    store = InMemoryStore()
    runs = store.seed(runs=2, events=3)
    marks, kicked = InMemoryMarks(store.clock), InMemoryKicked()
    worker = jobs.Worker(
        store=store,
        sink=InMemorySink(),
        queue=DrainQueue(marks, kicked, RecordingSender(), group_size=2, ttl=30),
        gate=SinkGate(InMemoryHealth(store.clock)),
        cursor=marks,
        kicked=kicked,
        limits=Limits(),
        kick_linger=0.01,
        database=OutageLog("database", clock=store.clock),
        meter=metrics.DrainMeter(registry),
    )

    jobs.drain_group(worker, runs)

    assert sample(registry, "outbox_events_published_total") == 6
    assert sample(registry, "outbox_drain_runs_total", status="drained") == 2
    assert sample(registry, "outbox_drain_duration_seconds_count") == 1


def test_the_database_collector_reports_each_gauge_as_read() -> None:
    registry = CollectorRegistry()
    registry.register(metrics.DatabaseCollector(lambda: BACKLOG))

    assert sample(registry, "outbox_database_up") == 1
    assert sample(registry, "outbox_pending_events") == 7
    assert sample(registry, "outbox_pending_runs") == 2
    assert sample(registry, "outbox_oldest_pending_age_seconds") == 12.5
    assert sample(registry, "outbox_stalled_runs") == 1
    assert sample(registry, "outbox_sink_down") == 0
    assert sample(registry, "outbox_sink_down_seconds") == 0


def test_a_sink_outage_shows_as_down_with_its_duration() -> None:
    registry = CollectorRegistry()
    down = metrics.Backlog(0, 0.0, 0, 0, sink_down_seconds=42.0)
    registry.register(metrics.DatabaseCollector(lambda: down))

    assert sample(registry, "outbox_sink_down") == 1
    assert sample(registry, "outbox_sink_down_seconds") == 42


def test_a_failed_database_read_reports_the_database_down_and_no_other_gauge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing() -> metrics.Backlog:
        raise OSError("connection refused")

    clock = Clock()
    log = logging.getLogger("test.metrics")
    registry = CollectorRegistry()
    registry.register(metrics.DatabaseCollector(failing, OutageLog("database", log, clock)))

    with caplog.at_level(logging.WARNING, logger="test.metrics"):
        names = {s.name for family in registry.collect() for s in family.samples}
        registry.collect()  # a second scrape at once: no second line

    assert names == {"outbox_database_up"}
    assert sample(registry, "outbox_database_up") == 0
    assert [r.getMessage() for r in caplog.records] == ["database unavailable: connection refused"]


@pytest.fixture
def server() -> Iterator[metrics.MetricsServer]:
    registry = metrics.scrape_registry(lambda: BACKLOG, directory=None)
    served = metrics.MetricsServer(registry, "127.0.0.1", 0)
    yield served
    served.close()


def test_the_server_answers_a_scrape_over_http_in_the_prometheus_text_format(
    server: metrics.MetricsServer,
) -> None:
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        body = response.read().decode()

    values = {
        s.name: s.value for family in text_string_to_metric_families(body) for s in family.samples
    }
    assert values["outbox_pending_events"] == 7
    assert values["outbox_stalled_runs"] == 1


def test_the_server_reads_the_counts_every_process_wrote_to_the_directory(
    tmp_path: Path,
) -> None:
    # Two processes count in multiprocess mode (the variable is read when prometheus_client is
    # imported, so each is a fresh interpreter); the scrape adds their counts up.
    program = (
        "import uuid, sys\n"
        "from tasks import metrics\n"
        "from tasks.drain import DrainResult, Status\n"
        "n = int(sys.argv[1])\n"
        "metrics.meter().drained([DrainResult(uuid.uuid4(), Status.DRAINED, published=n)], 0.1)\n"
    )
    for count in ("3", "4"):
        subprocess.run(
            [sys.executable, "-c", program, count],
            env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
            cwd=Path(__file__).resolve().parents[2],
            check=True,
            timeout=60,
        )
    registry = metrics.scrape_registry(lambda: BACKLOG, directory=str(tmp_path))

    assert sample(registry, "outbox_events_published_total") == 7
    assert sample(registry, "outbox_drain_runs_total", status="drained") == 2
    assert sample(registry, "outbox_drain_duration_seconds_count") == 2
    assert sample(registry, "outbox_pending_events") == 7  # and the database's gauges


def test_the_drain_core_and_the_jobs_load_no_prometheus_client() -> None:
    program = (
        "import sys, json\nimport tasks.drain, tasks.jobs\n"
        "print(json.dumps('prometheus_client' in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout) is False


def test_a_metrics_directory_that_does_not_exist_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        check_environment({"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/outbox-metrics"})
    assert str(refused.value) == (
        "PROMETHEUS_MULTIPROC_DIR must name an existing directory this process can write to, "
        "got '/nonexistent/outbox-metrics'"
    )
    check_environment({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})  # an existing one is fine


def test_outbox_metrics_refuses_a_port_out_of_range_as_bad_input() -> None:
    result = CliRunner().invoke(main, ["metrics", "--port", "70000"])
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output


def test_outbox_metrics_on_a_port_in_use_fails_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = CliRunner().invoke(main, ["metrics", "--port", str(port)])

    assert result.exit_code == 1
    assert result.output == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_outbox_metrics_serves_until_ctrl_c_and_reports_a_database_it_cannot_read(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "PATH": "/usr/bin:/bin",
        # Nothing listens on port 1: every read fails at once.
        "OUTBOX_DATABASE_URL": "postgresql+psycopg://outbox@127.0.0.1:1/outbox",
    }
    outbox = str(Path(sys.executable).with_name("outbox"))
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [outbox, "metrics", "--port", str(port)], env=env, stdout=out, stderr=err
        )
    try:
        bodies: list[str] = []

        def scraped() -> bool:
            assert process.poll() is None, stderr.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    bodies.append(response.read().decode())
            except OSError:
                return False
            return True

        wait_until(scraped, 60, "`outbox metrics` to answer")
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    samples = {
        s.name: s.value for f in text_string_to_metric_families(bodies[0]) for s in f.samples
    }
    assert samples == {"outbox_database_up": 0}  # no workers' counts, no made-up gauges
    assert stdout.read_text().splitlines() == [
        f"serving metrics at http://127.0.0.1:{port}/metrics (Ctrl-C or SIGTERM stops)",
        "stopped",
    ]
    not_set, outage = stderr.read_text().splitlines()
    assert not_set == (
        "PROMETHEUS_MULTIPROC_DIR is not set: serving the database's gauges only, not the "
        "workers' counts"
    )
    # One line, once however many scrapes fail: the driver's message, without SQLAlchemy's.
    assert outage.startswith("database (metrics) unavailable: connection failed: ")
    assert "sqlalche.me" not in outage
