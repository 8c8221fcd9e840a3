"""A real ``celery worker`` (and beat) as subprocesses, always stopped when the test ends.

Their broker is the sink's Redis unless the test is parametrised over ``BROKERS`` (every test
of ``tests/e2e/test_worker.py`` also runs on RabbitMQ). The test's queue reaches them as
``OUTBOX_QUEUE``, so every drain gets there through the outbox tasks' routing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from kombu import Connection
from kombu.exceptions import OperationalError

from tasks import app
from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.processes import CeleryProcess
from tests import services


class CeleryProcesses:
    """Starts worker, beat and `celery call` against this test's database, prefix and queue."""

    def __init__(self, settings: Settings, queue: str, workdir: Path, broker_url: str) -> None:
        self.queue = queue
        self.workdir = workdir
        self.broker_url = broker_url
        self.env = os.environ | {
            "OUTBOX_DATABASE_URL": settings.database_url.render_as_string(hide_password=False),
            "OUTBOX_REDIS_URL": settings.redis_url,
            "OUTBOX_STREAM_PREFIX": settings.stream_prefix,
            "OUTBOX_QUEUED_PREFIX": settings.queued_prefix,
            "OUTBOX_MAX_ATTEMPTS": str(settings.max_attempts),
            "CELERY_BROKER_URL": broker_url,
            "OUTBOX_QUEUE": queue,
        }
        self._procs: list[CeleryProcess] = []

    def _start(self, name: str, args: list[str], ready: str, env: dict[str, str]) -> CeleryProcess:
        log = self.workdir / f"{name}-{len(self._procs)}.log"
        process = CeleryProcess(name, args, env=env, log=log)
        self._procs.append(process)  # before waiting: stop() covers one that never got ready
        process.wait_ready(ready, timeout=60)
        return process

    def start_worker(
        self, concurrency: int = 2, options: Sequence[str] = (), **env: str
    ) -> CeleryProcess:
        """Start a prefork worker consuming this test's queue; return it once it is ready.

        ``options`` are more command-line options of ``celery worker``; ``env`` overrides the
        environment (``OUTBOX_REDIS_URL=...``).
        """
        hostname = f"{self.queue}-{len(self._procs)}@%h"
        args = [*processes.worker_args(self.queue, hostname, concurrency), *options]
        return self._start("worker", args, processes.WORKER_READY, self.env | env)

    def start_beat(self, interval: float, **env: str) -> CeleryProcess:
        """Start beat with dispatch every ``interval`` seconds; return it once it is ready."""
        args = processes.beat_args(self.workdir / "beat-schedule")
        env = self.env | {"OUTBOX_DISPATCH_INTERVAL": str(interval)} | env
        return self._start("beat", args, processes.BEAT_READY, env)

    def call(self, task: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``celery -A tasks call TASK --args '[...]'`` the way an operator would."""
        command = processes.celery_command("call", task)
        if args:
            command += ["--args", json.dumps(list(args))]
        return subprocess.run(
            command,
            cwd=processes.PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def logs(self) -> str:
        """Return everything the processes logged so far."""
        return "\n".join(process.read_log() for process in self._procs)

    def stop(self) -> None:
        """Stop every process: warm shutdown first, then kill what is left."""
        # SIGTERM to all first, so that they shut down side by side rather than in turn.
        for process in self._procs:
            if process.alive():
                process.terminate()
        for process in self._procs:
            process.stop()
        self._procs.clear()


# The brokers the end-to-end tests run on. RabbitMQ comes from OUTBOX_TEST_AMQP_URL, else the
# local default; like the other services, when it does not answer the test fails, never skips.
BROKERS = ("redis", "rabbitmq")
RABBITMQ_URL = os.environ.get("OUTBOX_TEST_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def is_amqp(broker_url: str) -> bool:
    """True for a RabbitMQ (AMQP) broker URL."""
    return broker_url.partition("://")[0] in {"amqp", "amqps", "pyamqp"}


def rabbitmq_url() -> str:
    """RabbitMQ's URL, once it has answered; fails the test with how to provide it if not."""
    with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
        try:
            connection.ensure_connection(max_retries=1)
        except (OperationalError, *connection.connection_errors) as exc:
            pytest.fail(
                f"RabbitMQ does not answer at {connection.as_uri()} ({exc}): start it on "
                "127.0.0.1:5672 (guest/guest), or set OUTBOX_TEST_AMQP_URL",
                pytrace=False,
            )
    return RABBITMQ_URL


def point_app_at(broker_url: str) -> None:
    """Make this process's Celery app send to ``broker_url`` from now on."""
    app.conf.update(broker_url=broker_url)
    # The app keeps its broker's connection pools: forget them, or sends would still go to
    # the broker of an earlier test. Kombu keeps them too, one per broker, and hands the same
    # ones back for the same broker: they stay open, for the next test on that broker.
    app._pool = None
    app.amqp._producer_pool = None


def delete_queue(broker_url: str, queue: str, redis_client: redis.Redis) -> None:
    """Delete what the broker keeps of this test's ``queue``, and nothing else."""
    if is_amqp(broker_url):
        with Connection(broker_url, connect_timeout=10) as connection:
            channel = connection.default_channel
            channel.queue_delete(queue)
            channel.exchange_delete(queue)  # Celery declares an exchange named after the queue
    else:  # the Redis transport's queue is a list under the test's key space; its bindings:
        redis_client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def queued_messages(broker_url: str, queue: str, redis_client: redis.Redis) -> int:
    """How many messages wait in ``queue``, not counting those a worker holds."""
    if is_amqp(broker_url):
        with Connection(broker_url, connect_timeout=10) as connection:
            _, count, _ = connection.default_channel.queue_declare(queue, passive=True)
            return int(count)
    return int(redis_client.llen(queue))


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """The test's broker: the sink's Redis, or one of ``BROKERS`` when parametrised with it
    (``pytest.mark.parametrize("broker_url", BROKERS, indirect=True)``)."""
    kind = getattr(request, "param", "redis")
    assert kind in BROKERS, kind
    return rabbitmq_url() if kind == "rabbitmq" else settings.redis_url


@pytest.fixture
def celery_processes(
    settings: Settings,
    key_space: str,
    tmp_path: Path,
    redis_client: redis.Redis,
    broker_url: str,
) -> Iterator[CeleryProcesses]:
    queue = f"{key_space}queue"
    supervisor = CeleryProcesses(settings, queue, tmp_path, broker_url)
    try:
        yield supervisor
    finally:
        supervisor.stop()
        delete_queue(broker_url, queue, redis_client)
        services.delete_keys(redis_client, f"{key_space}*")
