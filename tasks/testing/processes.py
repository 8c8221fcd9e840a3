"""``celery -A tasks worker|beat`` as subprocesses: started, waited for, signalled, stopped.

Shared by the test suite's ``celery_processes`` fixture and the bench. Each process runs in
its own session, hence its own process group, so that stopping it reaches a prefork worker's
pool children too, even after the parent itself died. Only the standard library is imported:
the supervising process need not load Celery, Redis or the project.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

# The directory that holds the ``tasks`` package (and the ``celeryconfig.py`` its app reads by
# path): the processes start there, so ``-A tasks`` imports this checkout's package.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# What the processes log once they are up: a worker at INFO, beat at INFO.
WORKER_READY = " ready."
BEAT_READY = "beat: Starting"


class ProcessExited(RuntimeError):
    """A ``celery`` process exited while it was expected to run."""


def celery_command(*args: str) -> list[str]:
    """Return the command line of ``celery -A tasks ARGS`` under this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "tasks", *args]


def worker_args(
    queue: str, hostname: str, concurrency: int = 2, loglevel: str = "INFO"
) -> list[str]:
    """Return the arguments of a prefork worker consuming only ``queue``."""
    return [
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        f"--queues={queue}",
        f"--hostname={hostname}",
        # No broadcast chatter with other workers on the same broker (other tests, benches).
        "--without-mingle",
        "--without-gossip",
        f"--loglevel={loglevel}",
    ]


def beat_args(schedule: Path, loglevel: str = "INFO") -> list[str]:
    """Return the arguments of beat keeping its schedule state in ``schedule``."""
    return ["beat", f"--schedule={schedule}", f"--loglevel={loglevel}"]


class CeleryProcess:
    """One ``celery -A tasks ...`` subprocess in its own process group, logging to a file.

    The process starts when the object is made; stop() it when done, also on failure.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        cwd: Path = PROJECT_ROOT,
    ) -> None:
        self.name = name
        self.log = log
        self._terminated = False
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                celery_command(*args),
                cwd=cwd,
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop() reaches the pool children too
            )

    @property
    def pid(self) -> int:
        """The main process's pid (the prefork parent, for a worker); also its group id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The main process's exit status, or None while it runs."""
        return self._proc.poll()

    def alive(self) -> bool:
        """Return True while the main process runs."""
        return self._proc.poll() is None

    def check(self) -> None:
        """Raise ProcessExited, with the end of the log, if the main process has exited."""
        if not self.alive():
            raise ProcessExited(f"{self.name} exited with {self.returncode}:\n{self.tail()}")

    def read_log(self) -> str:
        """Return everything the process logged so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the log."""
        return "\n".join(self.read_log().splitlines()[-lines:])

    def wait_ready(self, text: str, timeout: float = 60, interval: float = 0.05) -> None:
        """Poll the log until it contains ``text``; raise if the process exits or time is up."""
        deadline = time.monotonic() + timeout
        while text not in self.read_log():
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not log {text!r} within {timeout}s:\n{self.tail()}"
                )
            time.sleep(interval)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the main process only (its pool children are left alone)."""
        if self.alive():  # once reaped, the pid may belong to another process
            os.kill(self._proc.pid, sig)

    def terminate(self) -> None:
        """Ask the whole group for a warm shutdown (SIGTERM) without waiting for it."""
        # Also after the main process died: its orphaned pool children are still in the group.
        _signal_group(self._proc.pid, signal.SIGTERM)
        self._terminated = True

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM to the group), then SIGKILL whatever is left of the group."""
        if self.alive():
            if not self._terminated:  # a second SIGTERM is not needed, the first one counts
                self.terminate()
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
        # Pool children may outlive a parent that was killed: the group signal reaches them.
        _signal_group(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, sig)
