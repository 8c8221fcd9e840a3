"""A worker's graceful shutdown: drains stop between two batches, and the wait has a bound.

Celery's warm shutdown (SIGTERM to the worker's main process) stops taking messages and waits
for the running tasks, however long they take: up to CELERY_TASK_TIME_LIMIT, and a drain of
many runs or a long backlog runs ``OUTBOX_MAX_BATCHES`` batches. So, on a warm shutdown:

1. the main process raises a flag that its pool processes share (memory they inherit from
   it when they fork); each running drain asks it before every batch (``requested``), ends
   after the batch in progress, commits it, and queues a follow-up drain of its runs for the
   next worker, as it does when it hits its batch limit;
2. if drains still run after ``OUTBOX_SHUTDOWN_TIMEOUT`` seconds (a batch stuck on a lock or
   on a server that does not answer), the main process turns the warm shutdown into a cold
   one (SIGQUIT to itself): Celery cancels those tasks, PostgreSQL rolls their batch back
   (a batch commits whole or not at all), and the broker gets their messages back.

Either way every event ends up in its stream exactly once: what was committed is published,
and what was not is published by the next drain of the run.

Celery 5.5+ has ``worker_soft_shutdown_timeout``, but only for a cold shutdown, and it sleeps
for the whole timeout whenever a task runs, however soon the task ends; ``REMAP_SIGTERM`` makes
SIGTERM a cold shutdown, which cancels drains instead of letting them finish their batch.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

# One shared byte: an anonymous mapping is MAP_SHARED, so the pool processes, which fork from
# the main process after this module is imported (with the app), see what it writes here.
_flag = mmap.mmap(-1, 1)


def requested() -> bool:
    """Whether this worker is shutting down: a drain asks before each batch."""
    return _flag[0] == 1


def request() -> None:
    """Ask every drain of this worker (its pool processes included) to stop after its batch."""
    _flag[0] = 1


def clear() -> None:
    """Forget a request (tests: one process plays several workers in turn)."""
    _flag[0] = 0


def _cold_shutdown() -> None:
    os.kill(os.getpid(), signal.SIGQUIT)  # Celery's cold shutdown: cancel the running tasks


class Watchdog:
    """Turns a warm shutdown into a cold one if it has not ended after ``timeout`` seconds.

    Its thread is a daemon: a worker that exits in time takes it along, unfired.
    """

    def __init__(self, timeout: float, escalate: Callable[[], None] = _cold_shutdown) -> None:
        self.timeout = timeout
        self.escalate = escalate
        self.cancelled = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name="outbox-shutdown-watchdog", daemon=True
        )

    def start(self) -> None:
        """Start counting (from a signal handler: it only starts a thread)."""
        self.thread.start()

    def cancel(self) -> None:
        """Stop counting: the shutdown is over."""
        self.cancelled.set()

    def _run(self) -> None:
        if self.cancelled.wait(self.timeout):
            return
        logger.warning(
            "drains still running %gs after the shutdown began (OUTBOX_SHUTDOWN_TIMEOUT): "
            "cancelling them; their batches roll back and the next worker drains their runs",
            self.timeout,
        )
        self.escalate()


_watchdog: Watchdog | None = None


def begin(timeout: float) -> None:
    """A warm shutdown began in this (main) process: stop the drains, and bound the wait.

    Once only: Celery ignores a second SIGTERM, and so does this.
    """
    global _watchdog
    request()
    if _watchdog is None:
        _watchdog = Watchdog(timeout)
        _watchdog.start()


def end() -> None:
    """The worker stopped its pool: nothing is left for the watchdog to cancel."""
    if _watchdog is not None:
        _watchdog.cancel()
