"""Prometheus metrics: what the drains did, counted where they run, and what the database holds,
read when Prometheus scrapes.

Counted by the process that does the work (``DrainMeter``, through ``meter()``):

* ``outbox_events_published_total``: entries the sink added;
* ``outbox_events_already_present_total``: entries the sink held already (a repeat after a
  crash);
* ``outbox_drain_duration_seconds``: how long each drain of a group of runs took;
* ``outbox_drain_runs_total{status}``: runs drained, by the status their drain ended with;
* ``outbox_kicks_coalesced_total``: producers' kicks that found the kicked drain already queued
  or running, so queued no task.

The jobs (``tasks.jobs``) call the meter; the drain core only returns counts. Under Celery's
prefork pool every pool process counts on its own: with ``PROMETHEUS_MULTIPROC_DIR`` set,
prometheus_client writes each process's counts to files in that directory, and a scrape adds
them up (``scrape_registry``). A process creates its files when it first counts, so beat,
which drains nothing, writes none.

Read at each scrape, from the database (``DatabaseCollector``, one statement: ``tasks.sql``):
``outbox_pending_events``, ``outbox_pending_runs``, ``outbox_oldest_pending_age_seconds`` (the
lag), ``outbox_stalled_runs``, ``outbox_sink_down`` and ``outbox_sink_down_seconds`` (from the
shared ``sink_health`` row), and ``outbox_database_up`` (0 when that read failed; the other
gauges are then left out rather than reported as 0).

``outbox metrics`` serves both over HTTP (``serve``).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Sequence

import sqlalchemy.exc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from tasks import sql
from tasks.drain import DrainResult, Status
from tasks.errors import StoreUnavailable
from tasks.outages import OutageLog
from tasks.pg import SessionFactory

logger = logging.getLogger(__name__)

# From a few milliseconds (a short batch) to the default hard time limit (300 s).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SCRAPE_TIMEOUT = 5.0  # seconds the database may take to answer a scrape's statement
DEFAULT_PORT = 9808  # `outbox metrics --port`
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what ends `outbox metrics`


class DrainMeter:
    """The counters and the histogram of one process, in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.published = Counter(
            "outbox_events_published",
            "Entries the sink added to the runs' streams (events published).",
            registry=registry,
        )
        self.already_present = Counter(
            "outbox_events_already_present",
            "Entries a drain found in the stream already (a drain repeated after a crash).",
            registry=registry,
        )
        self.drain_duration = Histogram(
            "outbox_drain_duration_seconds",
            "How long each drain of a group of runs took (a task, or a group of a kicked drain).",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.drain_runs = Counter(
            "outbox_drain_runs",
            "Runs drained, by the status their drain ended with.",
            ["status"],
            registry=registry,
        )
        self.kicks_coalesced = Counter(
            "outbox_kicks_coalesced",
            "Kicks that found the kicked drain already queued or running (no task queued).",
            registry=registry,
        )
        for status in Status:  # every status's series exists from the start, at 0
            self.drain_runs.labels(status.value)

    def drained(self, results: Sequence[DrainResult], seconds: float) -> None:
        """Count one drain: its runs' entries and statuses, and how long it took."""
        self.published.inc(sum(r.published for r in results))
        self.already_present.inc(sum(r.already_present for r in results))
        self.drain_duration.observe(seconds)
        for result in results:
            self.drain_runs.labels(result.status.value).inc()

    def kicked(self, queued: bool) -> None:
        """Count a producer's kick that queued no drain (one was queued or running)."""
        if not queued:
            self.kicks_coalesced.inc()


_meter: DrainMeter | None = None
_meter_lock = threading.Lock()


def meter() -> DrainMeter:
    """This process's meter, in the default registry, made when the process first counts."""
    global _meter
    with _meter_lock:
        if _meter is None:
            _meter = DrainMeter()
        return _meter


def process_exited(pid: int, directory: str | None) -> None:
    """A pool process ended: drop its live gauges' files (its counters' files stay, so the
    totals never go down)."""
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


@dataclasses.dataclass(frozen=True)
class Backlog:
    """What the database holds, as the gauges show it."""

    pending_events: int
    oldest_pending_age: float  # seconds; 0 when nothing is pending
    pending_runs: int
    stalled_runs: int
    sink_down_seconds: float | None  # None while the sink is up


class SqlBacklog:
    """Reads the Backlog with one statement, bounded by its own statement timeout."""

    def __init__(self, session_factory: SessionFactory, timeout: float = SCRAPE_TIMEOUT) -> None:
        self.session_factory = session_factory
        self.timeout = timeout

    def __call__(self) -> Backlog:
        with self.session_factory() as session, session.begin():
            session.execute(sql.METRICS_TIMEOUT, {"timeout": f"{round(self.timeout * 1000)}ms"})
            row = session.execute(sql.METRICS).one()
        down = row.sink_down_seconds
        return Backlog(
            pending_events=int(row.pending_events),
            oldest_pending_age=float(row.oldest_pending_age),
            pending_runs=int(row.pending_runs),
            stalled_runs=int(row.stalled_runs),
            sink_down_seconds=None if down is None else float(down),
        )


class DatabaseCollector(Collector):
    """The database's gauges, read at each scrape by ``read``.

    A read that fails (the database down, a statement timeout) makes ``outbox_database_up``
    0 and leaves the other gauges out; it is logged once when it starts, at growing
    intervals while it lasts, and once when it ends.
    """

    def __init__(self, read: Callable[[], Backlog], log: OutageLog | None = None) -> None:
        self.read = read
        self.log = log or OutageLog("database (metrics)")

    def describe(self) -> Iterable[Metric]:
        return []  # no query when the collector is registered; names are checked at scrape

    def collect(self) -> Iterable[Metric]:
        try:
            backlog = self.read()
        except (sqlalchemy.exc.SQLAlchemyError, StoreUnavailable, OSError) as exc:
            self.log.failed(_one_line(exc))
            yield _gauge("outbox_database_up", "1 if the metrics' database read succeeded.", 0)
            return
        self.log.succeeded()
        yield _gauge("outbox_database_up", "1 if the metrics' database read succeeded.", 1)
        yield _gauge(
            "outbox_pending_events",
            "Events committed and not yet published.",
            backlog.pending_events,
        )
        yield _gauge(
            "outbox_pending_runs", "Runs with events not yet published.", backlog.pending_runs
        )
        yield _gauge(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest event not yet published (the lag); 0 when none is pending.",
            backlog.oldest_pending_age,
        )
        yield _gauge(
            "outbox_stalled_runs",
            "Runs parked after repeated failures; `outbox resume` restarts them.",
            backlog.stalled_runs,
        )
        down = backlog.sink_down_seconds
        yield _gauge(
            "outbox_sink_down",
            "1 while the workers find the sink unavailable.",
            int(down is not None),
        )
        yield _gauge(
            "outbox_sink_down_seconds",
            "How long the sink has been unavailable; 0 while it is up.",
            down or 0.0,
        )


def _one_line(exc: Exception) -> str:
    """The driver's own message, on one line (SQLAlchemy's adds the statement and a link)."""
    orig = getattr(exc, "orig", None) if isinstance(exc, sqlalchemy.exc.DBAPIError) else None
    return " ".join(str(orig or exc).split())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def scrape_registry(read: Callable[[], Backlog], directory: str | None) -> CollectorRegistry:
    """What `outbox metrics` serves: the counts that every process wrote to ``directory``
    (PROMETHEUS_MULTIPROC_DIR; none without it) and the database's gauges."""
    registry = CollectorRegistry()
    if directory is not None:
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(DatabaseCollector(read))
    return registry


class MetricsServer:
    """An HTTP server of ``registry``'s metrics (at any path, ``/metrics`` included), in a
    thread of its own, until ``close``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.httpd, self.thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one given for port 0)."""
        return int(self.httpd.server_port)

    def close(self) -> None:
        """Stop serving, close the socket and wait for the thread."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def serve_until_stopped(self) -> None:
        """Serve until this process gets SIGTERM or SIGINT (Ctrl-C), then close.

        Called from the main thread (signal handlers can only be set there); the previous
        handlers are back when it returns.
        """
        stopped = threading.Event()
        handlers = {sig: signal.signal(sig, lambda *_: stopped.set()) for sig in STOP_SIGNALS}
        try:
            while not stopped.wait(0.5):  # a timeout: the wait must not outlive a lost wake-up
                pass
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.close()
