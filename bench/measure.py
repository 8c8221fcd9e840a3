"""Timing and machine readings: CPU idle from /proc/stat, process RSS, the "all published" poll.

Linux only (the bench reads /proc), which is where the project's workers run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """Jiffies from the first line of /proc/stat: idle (idle + iowait) and total."""

    idle: int
    total: int

    @classmethod
    def now(cls) -> CpuTimes:
        """Read the machine's CPU counters."""
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        return cls(idle=fields[3] + fields[4], total=sum(fields[:8]))

    def idle_since(self, earlier: CpuTimes) -> float:
        """Percentage of CPU time (all cores) that was idle between ``earlier`` and this."""
        total = self.total - earlier.total
        return 100.0 * (self.idle - earlier.idle) / total if total > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One timed repetition of one implementation."""

    events: int
    seconds: float
    cpu_idle_pct: float
    capped: bool = False  # stopped at a time budget; the rate is over what it moved

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


def rss_kib(pid: int) -> tuple[int, int]:
    """Return (VmRSS, VmHWM) of ``pid`` in KiB, or (0, 0) once it is gone."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(" ")
            if key in values:
                values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values["VmRSS:"], values["VmHWM:"]


def children(pid: int) -> list[int]:
    """Return the pids whose parent is ``pid``."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The command name (field 2) is in parentheses and may contain spaces: split after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return sorted(found)


def percentile(sorted_values: list[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) of ``sorted_values`` (nearest rank)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]
