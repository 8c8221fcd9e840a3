"""A real ``celery worker`` (and beat) against one test's database, key space and queue.

The processes (``tasks.testing.processes``) get the test's settings through the environment,
and none of the caller's own ``OUTBOX_*`` or ``CELERY_*`` variables, so they never reach a
developer's servers. Their broker is the sink's Redis unless another is given; the test's
queue reaches them as ``OUTBOX_QUEUE``, so every drain gets there through the outbox tasks'
routing. ``stop()`` ends them all, pool children included.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.processes import CeleryProcess

READY_TIMEOUT = 60.0  # seconds a worker or beat may take to start on a busy machine


def environment(
    settings: Settings, queue: str, broker_url: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of processes that work for ``settings`` and ``queue`` alone."""
    inherited = os.environ if base is None else base
    kept = {
        name: value
        for name, value in inherited.items()
        if not name.startswith(("OUTBOX_", "CELERY_")) or name.startswith("OUTBOX_TEST_")
    }
    return kept | {
        "OUTBOX_DATABASE_URL": settings.database_url.render_as_string(hide_password=False),
        "OUTBOX_REDIS_URL": settings.redis_url,
        "OUTBOX_STREAM_PREFIX": settings.stream_prefix,
        "OUTBOX_QUEUED_PREFIX": settings.queued_prefix,
        "OUTBOX_MAX_ATTEMPTS": str(settings.max_attempts),
        "CELERY_BROKER_URL": broker_url,
        "OUTBOX_QUEUE": queue,
    }


class Workers:
    """Starts worker, beat and ``celery call`` for one test; ``stop()`` ends them all."""

    def __init__(
        self, settings: Settings, queue: str, workdir: Path, broker_url: str | None = None
    ) -> None:
        self.queue = queue
        self.workdir = workdir
        self.broker_url = broker_url or settings.redis_url
        self.env = environment(settings, queue, self.broker_url)
        self._procs: list[CeleryProcess] = []
        self._unready: list[tuple[CeleryProcess, str]] | None = None  # inside together()

    def _start(self, name: str, args: list[str], ready: str, env: dict[str, str]) -> CeleryProcess:
        log = self.workdir / f"{name}-{len(self._procs)}.log"
        process = CeleryProcess(name, args, env=env, log=log)
        self._procs.append(process)  # before waiting: stop() covers one that never got ready
        if self._unready is not None:
            self._unready.append((process, ready))
        else:
            process.wait_ready(ready, timeout=READY_TIMEOUT)
        return process

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Start the block's workers and beats side by side: each start returns at once, and
        the block ends when every one of them is ready. A worker's start-up is mostly imports,
        so on two cores a worker and a beat are ready in about the time of one."""
        unready: list[tuple[CeleryProcess, str]] = []
        self._unready = unready
        try:
            yield
        finally:
            self._unready = None
        for process, ready in unready:
            process.wait_ready(ready, timeout=READY_TIMEOUT)

    def start_worker(
        self, concurrency: int = 2, options: Sequence[str] = (), **env: str
    ) -> CeleryProcess:
        """Start a prefork worker consuming the test's queue; return it once it is ready.

        ``options``: more ``celery worker`` options; ``env``: environment overrides.
        """
        hostname = f"{self.queue}-{len(self._procs)}@%h"
        args = [*processes.worker_args(self.queue, hostname, concurrency), *options]
        return self._start("worker", args, processes.WORKER_READY, self.env | env)

    def start_beat(self, interval: float = 0.2, **env: str) -> CeleryProcess:
        """Start beat, dispatching every ``interval`` seconds; return it once it is ready."""
        args = processes.beat_args(self.workdir / f"beat-schedule-{len(self._procs)}")
        env = self.env | {"OUTBOX_DISPATCH_INTERVAL": str(interval)} | env
        return self._start("beat", args, processes.BEAT_READY, env)

    def call(self, task: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``celery -A tasks call TASK --args '[...]'``, the way an operator would."""
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

    def process_groups(self) -> list[int]:
        """The process group of each process started (a worker's pool children are in it)."""
        return [process.pid for process in self._procs]

    def logs(self) -> str:
        """Everything the processes logged so far."""
        return "\n".join(process.read_log() for process in self._procs)

    def stop(self) -> None:
        """Stop every process: warm shutdown first, then kill what is left."""
        for process in self._procs:  # SIGTERM to all first: they shut down side by side
            if process.alive():
                process.terminate()
        for process in self._procs:
            process.stop()
        self._procs.clear()
