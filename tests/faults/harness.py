"""A fault scenario's deployment: its sink, workers, beats and producer, and its clock.

``Scenario`` owns everything it starts (``close`` stops it all, workers first): private
``redis-server`` sinks, a TCP proxy, Celery workers and beats (through the harness's
``Workers``) that run as the scenario's restricted PostgreSQL role, and the producer
process (``tests.faults.producer``). Faults are recorded with ``fault()``, so the scenario
knows how many it injected and when the last one ended; ``settle()`` then waits until every
committed event is published and returns the seconds it took since then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import redis
from sqlalchemy import URL, text
from sqlalchemy.orm import Session, sessionmaker

from models import create_run
from tasks.testing import processes
from tasks.testing.processes import CeleryProcess
from tasks.testing.workers import Workers
from tests.faults import checker
from tests.faults.report import Figures
from tests.helpers import came_true
from tests.servers import RedisServer, TcpProxy

# What the workers, beats and producers of every scenario run with, besides the database, sink
# and queue: the defaults, except that the waits which follow a fault are shorter (the
# behaviour is the default's; most of a scenario's settling is these waits):
# - queued marks last 10 s, not 30: a drain lost to a fault (a killed worker's, a mark set
#   after its caller gave up) holds its runs back that long;
# - dispatch checks a sink that is down at most 2 s apart, not 15, so its return is seen soon;
# - 10 attempts before a run is parked (the harness sets 3 for the other tests).
SCENARIO_ENV = {"OUTBOX_QUEUED_TTL": "10", "OUTBOX_OUTAGE_CHECK_MAX": "2"}
WORKER_ENV = SCENARIO_ENV | {"OUTBOX_MAX_ATTEMPTS": "10"}
DISPATCH_INTERVAL = 0.5  # seconds between beat's dispatches

PENDING_ALL = text("SELECT count(*) FROM run_events WHERE published_at IS NULL")
PENDING_OUTSIDE = text(
    "SELECT count(*) FROM run_events WHERE published_at IS NULL"
    " AND NOT (run_id = ANY(CAST(:left_out AS uuid[])))"
)
# The connections of this scenario's workers, and no other session: its own database and the
# application name its workers' URL sets (their pool processes' connections included).
TERMINATE_WORKERS = text(
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = :database AND application_name = :application"
    " AND pid <> pg_backend_pid()"
)
# Transactions of this scenario's workers that began before :before (the database's clock).
OLDER_TRANSACTIONS = text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = :database AND application_name = :application"
    " AND xact_start < CAST(:before AS timestamptz)"
)
NOW = text("SELECT clock_timestamp()")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """The restricted PostgreSQL role the scenario's workers run as, and their URL."""

    name: str
    url: URL  # the role, the scenario's database, and ``application`` as application_name
    application: str


class ProducerProcess:
    """``python -m tests.faults.producer`` with a plan; its JSON report once it ends."""

    def __init__(self, plan: dict[str, Any], env: dict[str, str], workdir: Path) -> None:
        self.plan_file = workdir / f"producer-{uuid.uuid4().hex[:8]}.json"
        self.plan_file.write_text(json.dumps(plan))
        self.log = workdir / f"{self.plan_file.stem}.log"
        with self.log.open("wb") as err:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.producer", str(self.plan_file)],
                cwd=processes.PROJECT_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )

    def running(self) -> bool:
        """True while it produces."""
        return self._proc.poll() is None

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the producer to end; its report."""
        out, _ = self._proc.communicate(timeout=timeout)
        assert self._proc.returncode == 0, self.log.read_text()[-3000:]
        report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return report

    def kill(self) -> None:
        """Stop it, whatever it is doing (on a failing path)."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class Scenario:
    """One fault scenario's deployment and its record of faults."""

    def __init__(
        self,
        name: str,
        *,
        Session: sessionmaker[Session],
        database: str,
        role: WorkerRole,
        celery: Workers,
        prefix: str,
        workdir: Path,
    ) -> None:
        self.name = name
        self.Session = Session  # the database's owner: the checker and the scenario's own SQL
        self.database = database
        self.role = role
        self.celery = celery
        self.prefix = prefix
        self.workdir = workdir
        self.sink_url = ""  # what the workers and producers use (a server's, or a proxy's)
        self.sink: redis.Redis | None = None  # the sink's server itself, for the checker
        self.faults = 0
        self.last_fault_end: float | None = None
        self.reused: set[uuid.UUID] = set()  # runs expected to end parked with a CONFLICT
        self.producer_reports: list[dict[str, Any]] = []
        self._stack = contextlib.ExitStack()
        self._producers: list[ProducerProcess] = []

    # What the scenario starts.

    def start_sink(self, *args: str) -> RedisServer:
        """A private redis-server as the sink (``args``: its options), stopped by ``close``."""
        directory = self.workdir / f"sink-{uuid.uuid4().hex[:6]}"
        directory.mkdir()
        server = RedisServer(directory, *args)
        self._stack.callback(stop_redis, server)
        server.start()
        self.sink_url, self.sink = server.url, server.client()
        self._stack.callback(self.sink.close)
        return server

    def start_proxy(self, server: RedisServer) -> TcpProxy:
        """A TCP proxy to the sink: the workers and producers reach the sink through it."""
        proxy = TcpProxy(server.port)
        self._stack.callback(proxy.close)
        self.sink_url = proxy.url
        return proxy

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The workers' and beats' environment: the restricted role, the sink, ``extra``."""
        base = {
            "OUTBOX_DATABASE_URL": self.role.url.render_as_string(hide_password=False),
            "OUTBOX_REDIS_URL": self.sink_url,
        }
        return WORKER_ENV | base | dict(extra or {})

    def together(self) -> contextlib.AbstractContextManager[None]:
        """Start the block's workers and beats side by side (``Workers.together``)."""
        return self.celery.together()

    def start_worker(
        self, concurrency: int = 2, extra: Mapping[str, str] | None = None
    ) -> CeleryProcess:
        """Start a prefork worker as the restricted role (``extra``: more environment)."""
        return self.celery.start_worker(concurrency, **self.env(extra))

    def start_beat(
        self, interval: float = DISPATCH_INTERVAL, extra: Mapping[str, str] | None = None
    ) -> CeleryProcess:
        """Start beat, dispatching every ``interval`` seconds (``extra``: more environment)."""
        return self.celery.start_beat(interval, **self.env(extra))

    def create_runs(self, count: int) -> list[uuid.UUID]:
        """Create ``count`` runs, with no events yet, as the database's owner."""
        with self.Session() as session, session.begin():
            return [create_run(session).id for _ in range(count)]

    def start_producer(
        self,
        runs: Sequence[uuid.UUID],
        events: int,
        seconds: float,
        *,
        threads: int = 3,
        kick_every: int = 3,
    ) -> ProducerProcess:
        """Append ``events`` events to ``runs`` over about ``seconds``, from a process of its
        own, as the database's owner (producers need INSERT, which the workers' role lacks)."""
        plan = {
            "runs": [str(r) for r in runs],
            "events": events,
            "seconds": seconds,
            "threads": threads,
            "kick_every": kick_every,
            "seed": len(self._producers),
        }
        env = self.celery.env | SCENARIO_ENV | {"OUTBOX_REDIS_URL": self.sink_url}
        producer = ProducerProcess(plan, env, self.workdir)
        self._producers.append(producer)
        self._stack.callback(producer.kill)
        return producer

    def finish_producers(self, timeout: float = 600) -> None:
        """Wait for every producer; each must have committed everything, without an error."""
        for producer in self._producers:
            report = producer.finish(timeout)
            assert report["error_count"] == 0, report
            self.producer_reports.append(report)
        self._producers.clear()

    # Faults, and the scenario's clock.

    @contextlib.contextmanager
    def fault(self) -> Iterator[None]:
        """Count one fault: the block injects it and ends it (a server back, a worker started
        again). Settling is timed from the end of the last one."""
        self.faults += 1
        try:
            yield
        finally:
            self.last_fault_end = time.monotonic()

    def every(self, seconds: float, count: int, inject: Callable[[int], None]) -> None:
        """Call ``inject(i)`` ``count`` times, ``seconds`` apart from the start of the first
        (a fault schedule: the spacing is the point, not a wait for something)."""
        start = time.monotonic()
        for index in range(count):
            pause = start + seconds * (index + 1) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            inject(index)

    def hold(self, seconds: float) -> None:
        """Let a fault last ``seconds``: the fault's shape, not a wait for an outcome (every
        wait for an outcome polls with a deadline)."""
        time.sleep(seconds)

    def database_now(self) -> str:
        """The database's clock now, as text."""
        with self.Session() as session:
            return str(session.execute(NOW).scalar_one())

    def terminate_worker_connections(self) -> int:
        """``pg_terminate_backend`` on every connection of this scenario's workers."""
        params = {"database": self.database, "application": self.role.application}
        with self.Session() as session:
            return int(session.execute(TERMINATE_WORKERS, params).scalar_one())

    def worker_transactions_before(self, moment: str) -> int:
        """Transactions of this scenario's workers that began before ``moment``."""
        params = {
            "database": self.database,
            "application": self.role.application,
            "before": moment,
        }
        with self.Session() as session:
            return int(session.execute(OLDER_TRANSACTIONS, params).scalar_one())

    def pending(self) -> int:
        """Events not published yet, but for those of the reused runs."""
        with self.Session() as session:
            if not self.reused:
                return int(session.execute(PENDING_ALL).scalar_one())
            query, params = PENDING_OUTSIDE, {"left_out": list(self.reused)}
            return int(session.execute(query, params).scalar_one())

    def settle(self, limit: float) -> float:
        """Wait until every committed event is published (the reused runs' apart); return the
        seconds since the last fault ended. Fails after ``limit`` seconds."""
        assert self.last_fault_end is not None, "no fault was injected"
        left = self.last_fault_end + limit - time.monotonic()
        if not came_true(lambda: not self.pending(), left):
            raise AssertionError(
                f"{self.name}: {self.pending()} events still pending {limit:.0f}s after the "
                f"last fault\n{self.celery.logs()[-5000:]}"
            )
        return time.monotonic() - self.last_fault_end

    # The end.

    def check(self) -> checker.Findings:
        """The checker's findings over every run's stream and the database."""
        assert self.sink is not None
        return checker.check(self.Session, self.sink, self.prefix, reused=self.reused)

    def assert_sound(self, findings: checker.Findings, errors: list[str]) -> None:
        """Fail unless the streams hold exactly what was published, nothing is pending, no run
        is parked but the reused ones, no row stays locked, and the workers logged no error."""
        assert (findings.lost, findings.duplicated, findings.reordered) == (0, 0, 0), (
            findings.lost_by_run()
        )
        assert (findings.differ, findings.extra, findings.pending) == (0, 0, 0)
        assert set(findings.parked) == self.reused, findings.parked
        no_locks_left(self.Session)
        assert errors == [], "\n\n".join(errors[:5])

    def figures(
        self,
        title: str,
        size: str,
        faults: str,
        findings: checker.Findings,
        errors: list[str],
        settle: float,
    ) -> Figures:
        """This scenario's row of the reliability table."""
        return Figures(
            scenario=title,
            size=size,
            faults=faults,
            events=findings.events,
            lost=findings.lost,
            duplicated=findings.duplicated,
            reordered=findings.reordered,
            worker_errors=len(errors),
            settle_seconds=settle,
            test=self.name,
            errors=tuple(errors),
        )

    def conclude(
        self,
        title: str,
        size: str,
        faults: str | Callable[[], str],
        settle_limit: float,
        record: list[Figures],
        *,
        before_check: Callable[[], None] | None = None,
    ) -> checker.Findings:
        """The common end: wait for the producers, settle, check, hold the scenario to the
        promise, and leave its row in ``record``. ``before_check`` runs once the events are
        published (a replay, say); its time counts towards settling. ``faults`` describes
        them (a callable: once ``before_check`` has run)."""
        self.finish_producers()
        self.settle(settle_limit)
        if before_check is not None:
            before_check()
        findings = self.check()
        assert self.last_fault_end is not None
        settled = time.monotonic() - self.last_fault_end
        errors = checker.worker_errors(
            self.celery.logs(), checker.parked_with_conflict(self.reused)
        )
        described = faults() if callable(faults) else faults
        record.append(self.figures(title, size, described, findings, errors, settled))
        self.assert_sound(findings, errors)
        assert settled <= settle_limit, f"settled {settled:.1f}s after the last fault"
        return findings

    def close(self) -> None:
        """Stop everything the scenario started: workers and beats first, then the rest."""
        try:
            self.celery.stop()
        finally:
            self._stack.close()


def no_locks_left(Session: sessionmaker[Session], timeout: float = 15) -> None:
    """Wait until no session holds a row of ``runs`` or ``run_outbox``: a drain that began just
    before may hold one for a moment, but none may keep it."""
    if not came_true(lambda: checker.locked_runs(Session) == (0, 0), timeout):
        held = checker.locked_runs(Session)
        raise AssertionError(f"runs still locked {timeout}s after settling: {held}")


def stop_redis(server: RedisServer) -> None:
    """Stop a private redis-server, also one the scenario killed."""
    forget_dead_pid(server)
    server.stop()


def kill_redis(server: RedisServer) -> None:
    """``kill -9`` a private redis-server (by the pid in its pidfile); wait until it is gone."""
    pid = server.pid()
    assert pid is not None, "the sink is not running"
    os.kill(pid, signal.SIGKILL)
    assert came_true(lambda: not alive(pid), 10), f"redis-server {pid} survived kill -9"
    server.pidfile.unlink(missing_ok=True)


def forget_dead_pid(server: RedisServer) -> None:
    """Remove the pidfile of a server that is not running (a kill leaves it behind)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        if not alive(int(server.pidfile.read_text().strip())):
            server.pidfile.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has stopped running)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def pool_children(worker: CeleryProcess) -> list[int]:
    """The pids of a prefork worker's pool processes."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return [child.pid for child in psutil.Process(worker.pid).children()]
    return []
