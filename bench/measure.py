"""Timing and machine readings: machine CPU idle, process CPU and RSS, the "all published" poll.

CPU times and memory come from psutil. Only a process's peak RSS (VmHWM) is read from
/proc, which psutil does not report; elsewhere than Linux it reads as 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg

# Partial-index probe (ix_run_events_pending): as cheap with millions of published events as
# with none. A committed published_at means the entry is in the stream already, because every
# implementation commits only after its XADDs returned.
_ANY_PENDING = "SELECT EXISTS (SELECT 1 FROM run_events WHERE published_at IS NULL)"
_PUBLISHED = "SELECT coalesce(sum(next_seq - 1), 0)::bigint FROM run_outbox"


Tick = Callable[[float], None]


class BenchError(RuntimeError):
    """An implementation crashed, hung, or produced wrong stream contents."""


@dataclasses.dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU seconds over all cores so far: idle (idle + iowait) and total."""

    idle: float
    total: float

    @classmethod
    def now(cls) -> CpuTimes:
        """Read the machine's CPU counters."""
        times = psutil.cpu_times()
        # iowait is idle time too; guest time is inside user (and guest_nice inside nice)
        # already, so the total leaves them out, as psutil's own cpu_percent() does.
        idle = times.idle + getattr(times, "iowait", 0.0)
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        return cls(idle=idle, total=total)

    def busy_seconds_since(self, earlier: CpuTimes) -> float:
        """CPU seconds (all cores) spent busy between ``earlier`` and this."""
        return (self.total - earlier.total) - (self.idle - earlier.idle)

    def idle_since(self, earlier: CpuTimes) -> float:
        """Percentage of CPU time (all cores) that was idle between ``earlier`` and this."""
        total = self.total - earlier.total
        return 100.0 * (self.idle - earlier.idle) / total if total > 0 else 0.0


def idle_for(seconds: float) -> float:
    """Sleep ``seconds`` and return the machine's idle percentage meanwhile."""
    before = CpuTimes.now()
    time.sleep(seconds)
    return CpuTimes.now().idle_since(before)


QUIET_BUSY_PCT = 15  # before timing, wait (up to a minute) until the machine is this idle


def wait_quiet(
    busy_pct: float = QUIET_BUSY_PCT, patience: float = 60, sample: float = 0.5
) -> tuple[float, float]:
    """Wait up to ``patience`` s for the machine to be under ``busy_pct`` % busy.

    Returns (the last busy percentage seen, seconds waited).
    """
    start = time.monotonic()
    while True:
        busy = 100 - idle_for(sample)
        waited = time.monotonic() - start
        if busy <= busy_pct or waited >= patience:
            return busy, waited


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One timed repetition of one implementation."""

    events: int
    seconds: float
    cpu_idle_pct: float
    capped: bool = False  # stopped at a time budget; the rate is over what it moved
    # CPU seconds by role: the implementation's own processes, the bench database's server
    # backends, the Redis server (which other users of the server may add to).
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    # How busy the machine was just before the run: high means something else ran meanwhile.
    background_busy_pct: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, with the rate."""
        return dataclasses.asdict(self) | {"events_per_s": round(self.rate, 1)}


def any_pending(conn: psycopg.Connection) -> bool:
    """Return True while an event is unpublished."""
    row = conn.execute(_ANY_PENDING).fetchone()
    return bool(row and row[0])


def published_count(conn: psycopg.Connection) -> int:
    """Return the number of events below the drain cursors (published and committed)."""
    row = conn.execute(_PUBLISHED).fetchone()
    return int(row[0]) if row else 0


def wait_published(
    conn: psycopg.Connection,
    *,
    timeout: float,
    interval: float = 0.02,
    budget: float | None = None,
    tick: Tick | None = None,
) -> tuple[float, bool]:
    """Poll until nothing is pending; return (monotonic end time, whether ``budget`` ran out).

    ``tick(elapsed)`` runs before every poll (to re-send dispatch, check a worker is alive);
    ``timeout`` raises BenchError, ``budget`` ends the wait early with the flag set.
    """
    start = time.monotonic()
    while True:
        now = time.monotonic()
        elapsed = now - start
        if budget is not None and elapsed >= budget:
            return now, True
        if elapsed >= timeout:
            raise BenchError(f"events still pending after {timeout:.0f}s")
        if tick is not None:
            tick(elapsed)
        if not any_pending(conn):
            return time.monotonic(), False
        time.sleep(interval)


class CpuSplit:
    """CPU seconds spent by the implementation, PostgreSQL and Redis over a timed interval."""

    def __init__(self, conn: psycopg.Connection, redis_pid: int, clients: list[int]) -> None:
        self.conn = conn
        self.redis_pid = redis_pid
        self.clients = clients
        self.machine = CpuTimes.now()
        self.before = self._read()

    def _backends(self) -> dict[int, float]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        return {pid: cpu_seconds([pid]) for (pid,) in rows}

    def _read(self) -> tuple[float, dict[int, float], float]:
        return cpu_seconds(self.clients), self._backends(), cpu_seconds([self.redis_pid])

    def stop(self) -> tuple[float, dict[str, float]]:
        """Return (machine idle %, CPU seconds by role) since construction."""
        machine = CpuTimes.now()
        clients, backends, redis_cpu = self._read()
        # A backend that appeared meanwhile started meanwhile: all of its time counts.
        postgres = sum(cpu - self.before[1].get(pid, 0.0) for pid, cpu in backends.items())
        split = {
            "client": round(clients - self.before[0], 2),
            "postgres": round(postgres, 2),
            "redis": round(redis_cpu - self.before[2], 2),
        }
        # The rest of the machine's busy time: the bench's own poller, the kernel, PostgreSQL's
        # background processes, and anything else running on the machine.
        busy = machine.busy_seconds_since(self.machine)
        split["other"] = round(max(busy - sum(split.values()), 0.0), 2)
        return machine.idle_since(self.machine), split


def child_setup() -> int:
    """In a bench child process: leave Ctrl-C to the parent; return the parent's pid.

    The terminal sends SIGINT to the whole process group; the bench then stops its children
    itself (after their current transaction), so they ignore it rather than die mid-way.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return os.getppid()


def wait_event(event: Any, parent: int, timeout: float | None = None) -> bool:
    """Wait for a multiprocessing event; give up if the bench (``parent``) has died."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.wait(0.5):
        if os.getppid() != parent or (deadline is not None and time.monotonic() > deadline):
            return False
    return True


def rss_kib(pid: int) -> int:
    """Return the resident set size of ``pid`` in KiB, or 0 once it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss) // 1024
    except psutil.NoSuchProcess:
        return 0


def peak_rss_kib(pid: int) -> int:
    """Return the peak resident set size (VmHWM) of ``pid`` in KiB, or 0 if unknown or gone."""
    # psutil has no peak RSS for another process on Linux: memory_info() and
    # memory_full_info() carry rss, vms, shared, uss, pss and swap but not the kernel's
    # high-water mark, and getrusage() covers only this process and its reaped children.
    # So this one figure is read from /proc/<pid>/status, as the kernel keeps it.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone, or no /proc on this system
        return 0
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "VmHWM":
            return int(value.split()[0])  # "VmHWM:   123456 kB"
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """Return the CPU time (user + system) the live processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:  # gone meanwhile (ZombieProcess is one of these too)
            continue
        # The process's own time: not children_user/children_system, its reaped children's.
        total += times.user + times.system
    return total


def tree(pid: int) -> list[int]:
    """Return ``pid`` and its children (a prefork worker and its pool)."""
    return [pid, *children(pid)]


def children(pid: int) -> list[int]:
    """Return the pids whose parent is ``pid``."""
    try:
        return sorted(child.pid for child in psutil.Process(pid).children())
    except psutil.NoSuchProcess:
        return []


def percentile(sorted_values: list[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) of ``sorted_values`` (nearest rank)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]
