"""A real ``celery worker`` (and beat) as subprocesses, always stopped when the test ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.settings import Settings
from tests import services
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent


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
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _start(self, name: str, args: list[str], ready: str, env: dict[str, str]) -> Path:
        log = self.workdir / f"{name}-{len(self._procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches pool children
            )
        self._procs.append((proc, log))

        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{log.read_text()}")
            return ready in log.read_text()

        wait_until(started, timeout=60, what=f"{name} to start ({log})")
        return log

    def start_worker(self, concurrency: int = 2, **env: str) -> Path:
        """Start a prefork worker consuming this test's queue; return its log file."""
        args = [
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            f"--queues={self.queue}",
            f"--hostname={self.queue}-{len(self._procs)}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
        ]
        return self._start("worker", args, " ready.", self.env | env)

    def start_beat(self, interval: float, **env: str) -> Path:
        """Start beat with dispatch every ``interval`` seconds; return its log file."""
        args = ["beat", f"--schedule={self.workdir / 'beat-schedule'}", "--loglevel=INFO"]
        env = self.env | {"OUTBOX_DISPATCH_INTERVAL": str(interval)} | env
        return self._start("beat", args, "beat: Starting", env)

    def call(self, task: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``celery -A tasks call TASK --args '[...]'`` the way an operator would."""
        import json

        command = [sys.executable, "-m", "celery", "-A", "tasks", "call", task]
        if args:
            command += ["--args", json.dumps(list(args))]
        return subprocess.run(
            command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60, check=True
        )

    def logs(self) -> str:
        """Return everything the processes logged so far."""
        return "\n".join(log.read_text() for _, log in self._procs)

    def stop(self) -> None:
        """Stop every process: warm shutdown first, then kill what is left."""
        for proc, _ in self._procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._procs.clear()


@pytest.fixture
def celery_processes(
    settings: Settings, key_space: str, tmp_path: Path, redis_client: redis.Redis
) -> Iterator[CeleryProcesses]:
    queue = f"{key_space}queue"
    processes = CeleryProcesses(settings, queue, tmp_path)
    try:
        yield processes
    finally:
        processes.stop()
        redis_client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        services.delete_keys(redis_client, f"{key_space}*")
