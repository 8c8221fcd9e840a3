"""A real ``celery worker`` (and beat) as subprocesses, always stopped when the test ends."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.processes import CeleryProcess
from tests import services


class CeleryProcesses:
    """Starts worker, beat and `celery call` against this test's database, prefix and queue."""

    def __init__(self, settings: Settings, queue: str, workdir: Path) -> None:
        self.queue = queue
        self.workdir = workdir
        self.env = os.environ | {
            "OUTBOX_DATABASE_URL": settings.database_url.render_as_string(hide_password=False),
            "OUTBOX_REDIS_URL": settings.redis_url,
            "OUTBOX_STREAM_PREFIX": settings.stream_prefix,
            "OUTBOX_QUEUED_PREFIX": settings.queued_prefix,
            "OUTBOX_MAX_ATTEMPTS": str(settings.max_attempts),
            "CELERY_BROKER_URL": settings.redis_url,
            "CELERY_TASK_DEFAULT_QUEUE": queue,
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


@pytest.fixture
def celery_processes(
    settings: Settings, key_space: str, tmp_path: Path, redis_client: redis.Redis
) -> Iterator[CeleryProcesses]:
    queue = f"{key_space}queue"
    supervisor = CeleryProcesses(settings, queue, tmp_path)
    try:
        yield supervisor
    finally:
        supervisor.stop()
        redis_client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        services.delete_keys(redis_client, f"{key_space}*")
