"""In-memory stand-ins for the drain's store and the queue's bookkeeping, for the unit layer.

They keep the rules of the real ones (``tests/integration`` runs the same scenarios against
PostgreSQL and Redis), so the unit tests of the drain core, the jobs and the queueing need no
services. The in-memory sink is the package's own, ``tasks.sink.InMemorySink``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence

from tasks.errors import SinkUnavailable, StoreUnavailable
from tasks.store import Cursor, Locked, SinkHealth


@dataclasses.dataclass(frozen=True)
class Event:
    """A stored event, shaped like the SQL store's result rows."""

    run_id: uuid.UUID
    id: int
    seq: int
    type: str
    payload: str
    fetched: int = 0


@dataclasses.dataclass
class StoredRun:
    """A run's events and its drain cursor, as the tables hold them."""

    events: list[Event] = dataclasses.field(default_factory=list)
    published: set[int] = dataclasses.field(default_factory=set)  # seqs
    next_seq: int = 1
    status: str = "active"
    attempts: int = 0
    last_error: str | None = None
    retry_at: float | None = None


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class InMemoryStore:
    """The Store protocol over dicts: ``batch()`` commits on success and rolls back on error.

    ``busy`` holds runs another transaction holds; ``unavailable`` makes every call raise
    StoreUnavailable, as a database that went away does.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.runs: dict[uuid.UUID, StoredRun] = {}
        self.busy: set[uuid.UUID] = set()
        self.unavailable: str | None = None
        self.clock = clock or Clock()
        self._next_id = 1

    # Producing, for the tests' arrange steps.

    def create_run(self, run_id: uuid.UUID | None = None) -> uuid.UUID:
        """Create an empty run."""
        run_id = run_id or uuid.uuid4()
        self.runs[run_id] = StoredRun()
        return run_id

    def append(self, run_id: uuid.UUID, count: int = 1, type: str = "t", size: int = 0) -> None:
        """Append ``count`` committed events (payload ``{"n": seq, "pad": "x" * size}``)."""
        run = self.runs[run_id]
        for _ in range(count):
            seq = len(run.events) + 1
            payload = json.dumps({"n": seq, "pad": "x" * size}) if size else json.dumps({"n": seq})
            run.events.append(Event(run_id, self._next_id, seq, type, payload))
            self._next_id += 1

    def seed(self, runs: int = 1, events: int = 3) -> list[uuid.UUID]:
        """Create ``runs`` runs of ``events`` events each."""
        ids = [self.create_run() for _ in range(runs)]
        for run_id in ids:
            self.append(run_id, events)
        return ids

    def pending(self, run_id: uuid.UUID) -> list[int]:
        """The seqs of the run's events not marked published."""
        run = self.runs[run_id]
        return [e.seq for e in run.events if e.seq not in run.published]

    # The Store protocol.

    def _check(self) -> None:
        if self.unavailable is not None:
            raise StoreUnavailable(self.unavailable)

    @contextlib.contextmanager
    def batch(self) -> Iterator[InMemoryBatch]:
        self._check()
        saved = copy.deepcopy(self.runs)
        try:
            yield InMemoryBatch(self)
        except BaseException:
            self.runs = saved  # roll back
            raise

    def record_outage(self, run_ids: Sequence[uuid.UUID], error: str) -> None:
        self._check()
        for run_id in run_ids:
            if run_id in self.runs:
                self.runs[run_id].last_error = error

    def runs_with_more(self, next_seqs: Mapping[uuid.UUID, int]) -> set[uuid.UUID]:
        self._check()
        return {
            run_id
            for run_id, next_seq in next_seqs.items()
            if run_id in self.runs and len(self.runs[run_id].events) >= next_seq
        }

    def find_pending(
        self, limit: int, after: uuid.UUID | None = None, *, due_only: bool = True
    ) -> list[uuid.UUID]:
        self._check()
        found = [
            run_id
            for run_id, run in sorted(self.runs.items())
            if run.status == "active"
            and self.pending(run_id)
            and (after is None or run_id > after)
            and not (due_only and run.retry_at is not None and run.retry_at > self.clock())
        ]
        return found[:limit]

    def resume(self, run_ids: Sequence[uuid.UUID] | None) -> list[uuid.UUID]:
        self._check()
        asked = self.runs if run_ids is None else [r for r in run_ids if r in self.runs]
        chosen = [r for r in asked if self.runs[r].status == "stalled"]  # as RESUME's WHERE
        for run_id in chosen:
            run = self.runs[run_id]
            run.status, run.attempts, run.last_error, run.retry_at = "active", 0, None, None
        return chosen


class InMemoryBatch:
    """One transaction of an InMemoryStore (the Batch protocol)."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store

    def lock(self, run_ids: Sequence[uuid.UUID]) -> Locked:
        held, busy = {}, set()
        for run_id in sorted(set(run_ids)):
            run = self.store.runs.get(run_id)
            if run is None:
                continue
            if run_id in self.store.busy:
                busy.add(run_id)
            else:
                held[run_id] = Cursor(run_id, run.next_seq, run.status == "stalled", run.attempts)
        return Locked(held, busy)

    def read(self, cursors: Mapping[uuid.UUID, int], per_run: int, max_bytes: int) -> list[Event]:
        rows = []
        for run_id in sorted(cursors):
            window = [e for e in self.store.runs[run_id].events if e.seq >= cursors[run_id]]
            window = window[:per_run]
            size = 0
            for event in window:
                if size >= max_bytes:
                    break
                rows.append(dataclasses.replace(event, fetched=len(window)))
                size += len(event.type.encode()) + len(event.payload.encode())
        return rows

    def mark_published(self, event_ids: Sequence[int], next_seqs: Mapping[uuid.UUID, int]) -> None:
        ids = set(event_ids)
        for run_id, run in self.store.runs.items():
            run.published |= {e.seq for e in run.events if e.id in ids}
            if run_id in next_seqs:
                run.next_seq, run.attempts, run.last_error = next_seqs[run_id], 0, None
                run.retry_at = None

    def record_refusals(
        self, errors: Mapping[uuid.UUID, str], delays: Mapping[uuid.UUID, float], max_attempts: int
    ) -> set[uuid.UUID]:
        parked = set()
        for run_id, error in errors.items():
            run = self.store.runs[run_id]
            run.attempts += 1
            run.last_error = error
            run.retry_at = self.store.clock() + delays[run_id]
            if run.attempts >= max_attempts:
                run.status = "stalled"
                parked.add(run_id)
        return parked

    def park(self, errors: Mapping[uuid.UUID, str]) -> None:
        for run_id, error in errors.items():
            self.store.runs[run_id].status = "stalled"
            self.store.runs[run_id].last_error = error


class InMemoryHealth:
    """The shared sink-health record (``tasks.outages.HealthRecord``), on a test clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.probes = 0
        self.next_probe_at = 0.0

    def sink_health(self) -> SinkHealth:
        if self.down_since is None:
            return SinkHealth()
        since = dt.datetime.fromtimestamp(self.down_since, dt.UTC)
        due = self.next_probe_at <= self.clock()
        return SinkHealth(since, self.last_error, self.probes, due)

    def sink_down(self, error: str, first_check_in: float) -> bool:
        if self.down_since is not None:
            return False
        self.down_since, self.last_error, self.probes = self.clock(), error, 0
        self.next_probe_at = self.clock() + first_check_in
        return True

    def claim_probe(self, probes: int, next_check_in: float) -> bool:
        due = self.next_probe_at <= self.clock()
        if self.down_since is None or probes != self.probes or not due:
            return False
        self.probes += 1
        self.next_probe_at = self.clock() + next_check_in
        return True

    def sink_still_down(self, error: str) -> None:
        self.last_error = error

    def sink_up(self) -> float | None:
        if self.down_since is None:
            return None
        seconds, self.down_since, self.probes = self.clock() - self.down_since, None, 0
        return seconds


class InMemoryMarks:
    """Queued marks with TTLs (``tasks.queueing.Marks``) and the dispatch cursor."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.expiry: dict[uuid.UUID, float] = {}
        self.cursor: uuid.UUID | None = None
        self.unavailable: str | None = None

    def _check(self) -> None:
        if self.unavailable is not None:
            raise SinkUnavailable(self.unavailable)

    def held(self) -> set[uuid.UUID]:
        """The runs whose mark is set and not expired."""
        return {r for r, until in self.expiry.items() if until > self.clock()}

    def claim(self, run_ids: Sequence[uuid.UUID], ttl: int) -> list[uuid.UUID]:
        self._check()
        claimed = [r for r in dict.fromkeys(run_ids) if r not in self.held()]
        for run_id in claimed:
            self.expiry[run_id] = self.clock() + ttl
        return claimed

    def release(self, run_ids: Sequence[uuid.UUID]) -> None:
        self._check()
        for run_id in run_ids:
            self.expiry.pop(run_id, None)

    def dispatch_cursor(self) -> uuid.UUID | None:
        self._check()
        return self.cursor

    def set_dispatch_cursor(self, run_id: uuid.UUID | None, ttl: int) -> None:
        self._check()
        self.cursor = run_id


class InMemoryKicked:
    """The kicked set, its mark and wake-ups (``tasks.redis_marks.KickedSet``'s behaviour).

    ``fail_on`` names a method that raises SinkUnavailable, as Redis going away would.
    """

    def __init__(self) -> None:
        self.members: set[uuid.UUID] = set()
        self.marked = False
        self.wakes = 0
        self.fail_on: set[str] = set()
        self.kicks_while_waiting: list[list[uuid.UUID]] = []  # each wait() delivers one

    def _check(self, name: str) -> None:
        if name in self.fail_on:
            raise SinkUnavailable(f"Redis unavailable in {name}")

    def add(self, run_ids: Sequence[uuid.UUID], ttl: int) -> bool:
        self._check("add")
        self.members |= set(run_ids)
        if not self.marked:
            self.marked = True
            return True
        self.wakes += 1
        return False

    def take(self, count: int) -> list[uuid.UUID]:
        self._check("take")
        taken = sorted(self.members)[:count]
        self.members -= set(taken)
        return taken

    def wait(self, timeout: float) -> bool:
        self._check("wait")
        if self.kicks_while_waiting:
            self.members |= set(self.kicks_while_waiting.pop(0))
            return True
        return False

    def finish(self) -> bool:
        self._check("finish")
        if self.members:
            return False
        self.marked = False
        return True

    def put_back(self, run_ids: Sequence[uuid.UUID]) -> None:
        self._check("put_back")
        self.members |= set(run_ids)

    def hold(self, ttl: int) -> None:
        self._check("hold")
        self.marked = True

    def release(self) -> None:
        self._check("release")
        self.marked = False


class RecordingSender:
    """A Sender that records what it sent; ``fail_after`` sends, it raises ``error``."""

    def __init__(self, fail_after: int | None = None, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, list[uuid.UUID]]] = []
        self.fail_after = fail_after
        self.error = error or ConnectionError("broker unreachable")

    def _send(self, task: str, run_ids: list[uuid.UUID]) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise self.error
        self.sent.append((task, run_ids))

    def send_drain(self, run_ids: Sequence[uuid.UUID]) -> None:
        self._send("outbox.drain_runs" if len(run_ids) > 1 else "outbox.drain_run", list(run_ids))

    def send_kicked(self) -> None:
        self._send("outbox.drain_kicked", [])
