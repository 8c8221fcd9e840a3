"""The two reference relays, in plain psycopg 3 and redis-py: no ORM, no Celery, no project code.

* ``ideal``: the machine's practical limit. Per transaction: lock the next batch of unpublished
  events with ``FOR UPDATE SKIP LOCKED``, ``XADD`` them all in one pipeline, mark them with one
  ``UPDATE ... WHERE id = ANY(...)``, advance the runs' cursors with one more, commit.
* ``per-row``: the design the project replaces. Per transaction: select the next unpublished
  event, ``XADD`` it, update that row and its run's cursor, commit.

Both write exactly what the project writes: stream ``<prefix><run_id>``, entry id ``<seq>-0``,
fields ``type`` and ``payload`` (the JSONB as text), ``published_at`` set and
``run_outbox.next_seq`` advanced, so the same verification applies to every implementation.

Several relay processes must not interleave one run's events (process B could add seq 501
before process A has added seq 1, and A's XADD would then be refused), so each process owns a
fixed slice of the run-id space. That is the cheapest coordination there is (none), which is
what a practical limit should assume. Each process runs in its own spawned interpreter so
that it inherits no connection from the bench.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import multiprocessing.synchronize as mp_sync
import queue
import time
import traceback
import uuid
from typing import Any

import psycopg
import redis
from psycopg import sql

from bench.measure import BenchError, child_setup, wait_event

IDEAL = "ideal"
PER_ROW = "per-row"

_MARK_BATCH = "UPDATE run_events SET published_at = now() WHERE id = ANY(%(ids)s::bigint[])"
_ADVANCE_BATCH = """
UPDATE run_outbox AS o
SET next_seq = c.next_seq, last_published_at = now(), updated_at = now()
FROM unnest(%(runs)s::uuid[], %(next)s::bigint[]) AS c(run_id, next_seq)
WHERE o.run_id = c.run_id
"""
_MARK_ONE = "UPDATE run_events SET published_at = now() WHERE id = %(id)s"
_ADVANCE_ONE = """
UPDATE run_outbox SET next_seq = %(next)s, last_published_at = now(), updated_at = now()
WHERE run_id = %(run)s
"""


@dataclasses.dataclass(frozen=True)
class RelaySpec:
    """What one relay process does: which implementation, where, and its slice of runs."""

    kind: str
    conninfo: str
    redis_url: str
    stream_prefix: str
    low: uuid.UUID | None  # inclusive; None: from the start
    high: uuid.UUID | None  # exclusive; None: to the end
    batch_size: int = 500


def partitions(count: int) -> list[tuple[uuid.UUID | None, uuid.UUID | None]]:
    """Split the run-id space into ``count`` contiguous slices of equal width."""
    bounds = [uuid.UUID(int=(k << 128) // count) for k in range(1, count)]
    lows: list[uuid.UUID | None] = [None, *bounds]
    highs: list[uuid.UUID | None] = [*bounds, None]
    return list(zip(lows, highs, strict=True))


def _select(spec: RelaySpec, *, limit: int, keyset: bool) -> sql.Composed:
    # Rows come off the partial index ix_run_events_pending (run_id, seq) in order.
    conditions: list[sql.Composable] = [sql.SQL("published_at IS NULL")]
    if spec.low is not None:
        conditions.append(sql.SQL("run_id >= {}").format(sql.Literal(spec.low)))
    if spec.high is not None:
        conditions.append(sql.SQL("run_id < {}").format(sql.Literal(spec.high)))
    if keyset:
        conditions.append(sql.SQL("(run_id, seq) > (%(after_run)s, %(after_seq)s)"))
    return sql.SQL(
        "SELECT id, run_id, seq, type, payload::text FROM run_events WHERE {}"
        " ORDER BY run_id, seq LIMIT {} FOR UPDATE SKIP LOCKED"
    ).format(sql.SQL(" AND ").join(conditions), sql.Literal(limit))


def relay_ideal(
    conn: psycopg.Connection, client: redis.Redis, spec: RelaySpec, stop: mp_sync.Event
) -> int:
    """Move batches until the slice has no unpublished event; return the events moved."""
    from_start = _select(spec, limit=spec.batch_size, keyset=False)
    # Continuing after the last event moved, rather than from the start of the index, skips
    # the index entries of the events published so far, which stay until a vacuum removes them.
    onward = _select(spec, limit=spec.batch_size, keyset=True)
    moved = 0
    after: tuple[uuid.UUID, int] | None = None
    while not stop.is_set():
        if after is None:
            rows = conn.execute(from_start).fetchall()
        else:
            rows = conn.execute(onward, {"after_run": after[0], "after_seq": after[1]}).fetchall()
        if not rows:
            conn.rollback()
            if after is None:
                return moved
            after = None  # one more pass from the start picks up anything committed behind
            continue
        pipe = client.pipeline(transaction=False)
        cursors: dict[uuid.UUID, int] = {}
        for _id, run_id, seq, type_, payload in rows:
            pipe.xadd(
                f"{spec.stream_prefix}{run_id}", {"type": type_, "payload": payload}, id=f"{seq}-0"
            )
            cursors[run_id] = seq + 1
        pipe.execute()  # raises on the first refused entry: that would be a lost event
        conn.execute(_MARK_BATCH, {"ids": [row[0] for row in rows]})
        conn.execute(_ADVANCE_BATCH, {"runs": list(cursors), "next": list(cursors.values())})
        conn.commit()
        moved += len(rows)
        after = (rows[-1][1], rows[-1][2])
    return moved


def relay_per_row(
    conn: psycopg.Connection, client: redis.Redis, spec: RelaySpec, stop: mp_sync.Event
) -> int:
    """Move one event per transaction until the slice has none left; return the events moved."""
    next_event = _select(spec, limit=1, keyset=False)
    moved = 0
    while not stop.is_set():
        row = conn.execute(next_event).fetchone()
        if row is None:
            conn.rollback()
            return moved
        event_id, run_id, seq, type_, payload = row
        client.xadd(
            f"{spec.stream_prefix}{run_id}", {"type": type_, "payload": payload}, id=f"{seq}-0"
        )
        conn.execute(_MARK_ONE, {"id": event_id})
        conn.execute(_ADVANCE_ONE, {"next": seq + 1, "run": run_id})
        conn.commit()
        moved += 1
    return moved


class RelayFailed(BenchError):
    """A relay process raised or died."""


_RELAYS = {IDEAL: relay_ideal, PER_ROW: relay_per_row}


def relay_main(
    index: int,
    spec: RelaySpec,
    ready: mp.Queue[int],
    start: mp_sync.Event,
    stop: mp_sync.Event,
    release: mp_sync.Event,
    results: mp.Queue[tuple[int, int, str | None]],
) -> None:
    """Child process: connect, report ready, wait for the start, relay, report the count.

    The process and its connection stay until ``release``, so the bench can read the CPU
    time of both (a finished process's counters are gone).
    """
    parent = child_setup()
    try:
        with psycopg.connect(spec.conninfo) as conn:
            client = redis.Redis.from_url(spec.redis_url, socket_timeout=30)
            client.ping()
            conn.execute("SELECT 1")
            conn.rollback()
            ready.put(index)
            if not wait_event(start, parent):
                return
            moved = _RELAYS[spec.kind](conn, client, spec, stop)
            results.put((index, moved, None))
            wait_event(release, parent, timeout=300)
            client.close()
    except Exception:
        results.put((index, 0, traceback.format_exc()))
        raise


@dataclasses.dataclass
class RelayPool:
    """Relay processes started and connected, waiting for ``go()``; always ``close()`` them."""

    kind: str
    specs: list[RelaySpec]
    _ctx: Any = dataclasses.field(init=False, repr=False)
    _procs: list[Any] = dataclasses.field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._ready: mp.Queue[int] = self._ctx.Queue()
        self._results: mp.Queue[tuple[int, int, str | None]] = self._ctx.Queue()
        self._start = self._ctx.Event()
        self._stop = self._ctx.Event()
        self._release = self._ctx.Event()
        self._reports: dict[int, tuple[int, str | None]] = {}

    def launch(self, timeout: float = 60) -> None:
        """Start the processes and wait until every one is connected."""
        for index, spec in enumerate(self.specs):
            proc = self._ctx.Process(
                target=relay_main,
                args=(
                    index,
                    spec,
                    self._ready,
                    self._start,
                    self._stop,
                    self._release,
                    self._results,
                ),
                name=f"relay-{self.kind}-{index}",
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
        deadline = time.monotonic() + timeout
        for _ in self._procs:
            while True:
                try:
                    self._ready.get(timeout=0.5)
                    break
                except queue.Empty:
                    self.check()
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.kind} relays did not start") from None

    def go(self) -> None:
        """Let the relays start moving events."""
        self._start.set()

    def pids(self) -> list[int]:
        """The relay processes' pids."""
        return [proc.pid for proc in self._procs]

    def halt(self) -> None:
        """Ask the relays to stop after their current transaction."""
        self._stop.set()

    def _collect(self, block: bool, timeout: float = 0) -> None:
        while len(self._reports) < len(self._procs):
            try:
                index, moved, error = self._results.get(block=block, timeout=timeout or None)
            except queue.Empty:
                return
            self._reports[index] = (moved, error)

    def check(self) -> None:
        """Raise with the child's traceback if a relay process failed."""
        self._collect(block=False)
        for moved_error in self._reports.values():
            if moved_error[1] is not None:
                raise RelayFailed(f"{self.kind} relay failed:\n{moved_error[1]}")
        for proc in self._procs:
            if proc.exitcode not in (None, 0):
                raise RelayFailed(f"{self.kind} relay {proc.name} exited with {proc.exitcode}")

    def finish(self, timeout: float = 60) -> int:
        """Wait for every relay to report its count (they then wait for ``close``)."""
        deadline = time.monotonic() + timeout
        while len(self._reports) < len(self._procs):
            if time.monotonic() > deadline:
                raise RelayFailed(f"{self.kind} relays did not finish")
            self._collect(block=True, timeout=0.5)
            self.check()
        return sum(moved for moved, _ in self._reports.values())

    def close(self) -> None:
        """Let the relays exit; stop whatever still runs."""
        self._stop.set()
        self._release.set()
        self._start.set()  # a relay still waiting to start sees the stop and returns
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        self._ready.close()
        self._results.close()


def pool(kind: str, processes: int, conninfo: str, redis_url: str, stream_prefix: str) -> RelayPool:
    """Build (not start) a pool of ``processes`` relays of ``kind``, one run-id slice each."""
    specs = [
        RelaySpec(kind, conninfo, redis_url, stream_prefix, low, high)
        for low, high in partitions(processes)
    ]
    return RelayPool(kind, specs)
