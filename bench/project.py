"""The project under test, run two ways: real Celery workers end to end, and in-process drains.

End to end, the bench starts ``python -m celery -A tasks worker --pool=prefork`` (and, for the
latency workload, ``celery beat``) as subprocesses, each in its own process group so that
stopping it reaches its pool children, with the environment that points them at the bench's
database, Redis prefix and queue. Workers log at WARNING: at INFO every task writes two lines,
which at thousands of tasks a second would be measured too.

Throughput runs do not start beat: the bench itself sends ``outbox.dispatch`` (exactly what
beat sends, with beat's ``expires``) at the start and then every dispatch interval, so the
first dispatch goes out the moment the clock starts instead of up to an interval later.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import psycopg
import redis
from sqlalchemy import URL
from sqlalchemy.orm import Session, sessionmaker

import tasks
from bench import env as bench_env
from bench import measure, seed
from models.db import make_engine
from tasks import redis_sink
from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.processes import CeleryProcess

logger = logging.getLogger(__name__)

DISPATCH_INTERVAL = 1.0
# What beat attaches to each dispatch (celeryconfig.beat_schedule): a stale one is dropped.
DISPATCH_EXPIRES = max(DISPATCH_INTERVAL * 5, 5.0)


def start_worker(
    env: bench_env.BenchEnv, workdir: Path, concurrency: int, tag: str
) -> CeleryProcess:
    """Start a prefork worker with ``concurrency`` processes on the bench queue."""
    args = processes.worker_args(
        env.queue,
        # Under the bench prefix, so any key named after the node is cleaned up with the rest.
        hostname=f"{env.key_prefix}{tag}@%h",
        concurrency=concurrency,
        loglevel="WARNING",
    )
    environ = os.environ | env.variables()
    return CeleryProcess(f"worker {tag}", args, env=environ, log=workdir / f"worker-{tag}.log")


def start_beat(env: bench_env.BenchEnv, workdir: Path, interval: float, tag: str) -> CeleryProcess:
    """Start beat sending ``outbox.dispatch`` every ``interval`` seconds to the bench queue."""
    args = processes.beat_args(workdir / f"beat-{tag}.schedule")
    environ = os.environ | env.variables(dispatch_interval=interval)
    return CeleryProcess(f"beat {tag}", args, env=environ, log=workdir / f"beat-{tag}.log")


def send_dispatch(env: bench_env.BenchEnv) -> None:
    """Send one ``outbox.dispatch`` to the bench queue, as beat does."""
    tasks.app.send_task("outbox.dispatch", queue=env.queue, expires=DISPATCH_EXPIRES)


def dispatcher(
    env: bench_env.BenchEnv, workers: list[CeleryProcess], interval: float = DISPATCH_INTERVAL
) -> measure.Tick:
    """A poll tick that checks the processes are alive and sends dispatch on beat's schedule."""
    due = [0.0]

    def tick(elapsed: float) -> None:
        for worker in workers:
            worker.check()
        if elapsed >= due[0]:
            send_dispatch(env)
            # Fixed schedule from the start, like beat: a slow send does not shift later ones.
            while due[0] <= elapsed:
                due[0] += interval

    return tick


def warm_up(
    conn: psycopg.Connection,
    client: redis.Redis,
    env: bench_env.BenchEnv,
    worker: CeleryProcess,
    processes: int,
) -> float:
    """Drain a few tiny runs through the worker: proves it consumes, warms every pool child.

    Returns the seconds it took from start-up (import, connect) to the last entry.
    """
    started = time.monotonic()
    seed.reset(conn, client, env)
    seed.seed_runs(conn, seed.make_run_ids(4 * processes, "warm-up"), 1)
    measure.wait_published(conn, timeout=120, interval=0.05, tick=dispatcher(env, [worker]))
    seed.reset(conn, client, env)
    return time.monotonic() - started


def end_to_end(
    conn: psycopg.Connection,
    env: bench_env.BenchEnv,
    worker: CeleryProcess,
    events: int,
    split: measure.CpuSplit,
    *,
    timeout: float,
) -> measure.Measurement:
    """Time from the first dispatch (data already committed) until no event is unpublished."""
    tick = dispatcher(env, [worker])
    start = time.monotonic()
    end, _ = measure.wait_published(conn, timeout=timeout, tick=tick)
    idle, cpu = split.stop()
    return measure.Measurement(events, end - start, idle, cpu=cpu)


@dataclasses.dataclass(frozen=True)
class InProcess:
    """The drain's explicit collaborators, built from the same environment as the workers'."""

    session_factory: sessionmaker[Session]
    publisher: redis_sink.RedisStreamSink
    settings: Settings

    @classmethod
    def build(cls, database_url: URL | None = None) -> InProcess:
        """Build them from this process's environment (the bench's, see env.export).

        With ``database_url``, against that database instead of the environment's.
        """
        settings = Settings.from_env()
        if database_url is not None:
            settings = dataclasses.replace(settings, database_url=database_url)
        client = redis_sink.connect(settings.redis_url, timeout=settings.redis_timeout)
        return cls(
            session_factory=sessionmaker(
                make_engine(settings.database_url), expire_on_commit=False
            ),
            publisher=redis_sink.RedisStreamSink(client, settings.stream_prefix),
            settings=settings,
        )

    def drain_all(
        self, events: int, split: measure.CpuSplit, *, timeout: float
    ) -> measure.Measurement:
        """Loop ``drain_outbox_once()`` in this process until a pass ends ``drained``."""
        start = time.monotonic()
        published = 0
        while True:
            result = tasks.drain_outbox_once(
                session_factory=self.session_factory,
                publisher=self.publisher,
                settings=self.settings,
            )
            published += result.published
            if result.failed:
                raise measure.BenchError(f"in-process drain: {result.failed} runs failed")
            if result.status == tasks.Status.DRAINED:
                break
            if time.monotonic() - start > timeout:
                raise measure.BenchError(f"in-process drain not done after {timeout:.0f}s")
        seconds = time.monotonic() - start
        idle, cpu = split.stop()
        if published != events:
            raise measure.BenchError(f"in-process drain published {published} of {events}")
        return measure.Measurement(events, seconds, idle, cpu=cpu)

    def close(self) -> None:
        """Close the engine's connections and the Redis client."""
        engine = self.session_factory.kw.get("bind")
        if engine is not None:
            engine.dispose()
        self.publisher.client.close()
