"""What each Celery task does, as plain functions over explicit collaborators.

``tasks.outbox`` only wires these to Celery; tests drive them without a broker. Their fault
policy, in one place:

* a run the sink refuses has its attempt recorded and a retry time set (``tasks.retry``);
  dispatch queues it again when that time comes, and parks it after ``max_attempts``;
* a sink outage is recorded once for the deployment (``tasks.outages.SinkGate``); the drain
  ends, and dispatch queues its runs again once a check finds the sink back;
* a database outage is logged by each process that meets it (``OutageLog``); the runs stay
  pending, and the next dispatch queues them again;
* nothing here raises for any of these: a task that meets a fault reports it and ends, so a
  worker's log gets a line per outage step, not a traceback per task.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tasks import drain, logs
from tasks.drain import DrainResult, Fault, Limits, Status
from tasks.errors import SinkUnavailable, StoreUnavailable
from tasks.outages import OutageLog, SinkGate
from tasks.queueing import DrainQueue
from tasks.sink import Sink
from tasks.store import Store

logger = logging.getLogger(__name__)


class DispatchCursor(Protocol):
    """Where the last dispatch pass stopped (``tasks.redis_marks.QueuedMarks``)."""

    def dispatch_cursor(self) -> uuid.UUID | None: ...
    def set_dispatch_cursor(self, run_id: uuid.UUID | None, ttl: int) -> None: ...


class KickedRuns(Protocol):
    """The kicked set as its drain uses it (``tasks.redis_marks.KickedSet``)."""

    def take(self, count: int) -> list[uuid.UUID]: ...
    def wait(self, timeout: float) -> bool: ...
    def finish(self) -> bool: ...
    def put_back(self, run_ids: Sequence[uuid.UUID]) -> None: ...
    def hold(self, ttl: int) -> None: ...
    def release(self) -> None: ...


class Meter(Protocol):
    """Counts what each drain did (``tasks.metrics.DrainMeter``)."""

    def drained(self, results: Sequence[DrainResult], seconds: float) -> None: ...


class Unmetered:
    """A meter that counts nothing: the default (tests, and workers built without metrics)."""

    def drained(self, results: Sequence[DrainResult], seconds: float) -> None:
        """Count nothing."""


def _never() -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class Worker:
    """Everything a task needs, built once per process by ``tasks.runtime``."""

    store: Store
    sink: Sink
    queue: DrainQueue
    gate: SinkGate
    cursor: DispatchCursor
    kicked: KickedRuns
    limits: Limits
    kick_linger: float
    database: OutageLog = dataclasses.field(default_factory=lambda: OutageLog("database"))
    meter: Meter = dataclasses.field(default_factory=Unmetered)
    # True once the worker shuts down (tasks.shutdown): drains stop between two batches.
    should_stop: Callable[[], bool] = _never


@dataclasses.dataclass(frozen=True)
class Group:
    """What a drain task did: one result per run, and the outage that ended it, if any."""

    results: list[DrainResult]
    trouble: str | None = None  # the sink or the database was unavailable

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``outbox.drain_runs`` and ``outbox.drain_kicked`` return."""
        report = {
            "runs": len(self.results),
            "published": sum(r.published for r in self.results),
            "already_present": sum(r.already_present for r in self.results),
            "statuses": dict(collections.Counter(r.status.value for r in self.results)),
        }
        return report | ({"error": self.trouble} if self.trouble else {})


def drain_group(
    worker: Worker, run_ids: Sequence[uuid.UUID], *, queued: bool = True, check_again: bool = True
) -> Group:
    """Drain ``run_ids`` (a queued drain, whose marks it releases, unless ``queued`` is False).

    Runs that hit the batch limit, or that a shutdown left over, get a follow-up drain at
    once. Logs one line for the drain (``tasks.logs.drain_line``) and counts it.
    """
    started = time.monotonic()
    sink = logs.PublishedSeqs(worker.sink)
    group = _drain_group(worker, sink, run_ids, queued=queued, check_again=check_again)
    seconds = time.monotonic() - started
    message, fields = logs.drain_line(group.results, sink.ranges, seconds)
    logger.info(message, extra=fields)
    try:
        worker.meter.drained(group.results, seconds)
    except Exception as exc:  # noqa: BLE001 - the drain is committed: a count must not fail it
        logger.warning("could not count a drain in the metrics: %s", exc)
    return group


def _drain_group(
    worker: Worker, sink: Sink, run_ids: Sequence[uuid.UUID], *, queued: bool, check_again: bool
) -> Group:
    try:
        if queued:
            worker.queue.started(run_ids)
        results = drain.drain_runs(
            worker.store,
            sink,
            run_ids,
            worker.limits,
            check_again=check_again,
            should_stop=worker.should_stop,
        )
    except (SinkUnavailable, StoreUnavailable) as exc:
        return _unavailable(worker, run_ids, exc)
    worker.database.succeeded()
    outage = next((r.error for r in results if r.fault is Fault.OUTAGE), None)
    if outage is not None:
        worker.gate.failed(outage)
        return Group(results, outage)
    more = [r.run_id for r in results if r.status is Status.MORE and r.fault is None]
    if more:
        _queue_follow_ups(worker, more)
    return Group(results)


def _unavailable(worker: Worker, run_ids: Sequence[uuid.UUID], exc: Exception) -> Group:
    fault = None
    if isinstance(exc, StoreUnavailable):
        worker.database.failed(exc)
    else:
        worker.gate.failed(str(exc))
        fault = Fault.OUTAGE
    results = [DrainResult(run_id, Status.MORE, error=str(exc), fault=fault) for run_id in run_ids]
    return Group(results, str(exc))


def _queue_follow_ups(worker: Worker, run_ids: list[uuid.UUID]) -> None:
    try:
        worker.queue.drain(run_ids)
    except SinkUnavailable as exc:
        worker.gate.failed(str(exc))
    except Exception as exc:  # noqa: BLE001 - the broker's: these runs wait for dispatch
        logger.warning("could not queue %d follow-up drains: %s", len(run_ids), exc)


def drain_kicked(worker: Worker) -> Group:
    """Drain the runs producers kicked, ``group_size`` at a time, holding the set's mark.

    Kicks meanwhile add to this drain's work instead of queueing more tasks. With the set
    empty it waits up to ``kick_linger`` seconds for another kick before it clears the mark
    and ends; after ``max_batches`` groups, or when the worker shuts down, a successor takes
    over. Whatever ends it (an outage, a time limit, any error), the runs it took and did not
    drain go back to the set and the mark is released, so the next kick queues a new drain.
    """
    results: list[DrainResult] = []
    taken: list[uuid.UUID] = []
    try:
        worker.kicked.hold(worker.queue.ttl)  # a chain of successors must not outlive it
        groups = 0
        while groups < worker.limits.max_batches and not worker.should_stop():
            taken = worker.kicked.take(worker.limits.group_size)
            if not taken:
                if worker.kicked.wait(worker.kick_linger) or not worker.kicked.finish():
                    continue  # a kick came: its runs are in the set now
                return Group(results)
            # A kick while this drain holds a run puts it back in the set: no second look.
            group = drain_group(worker, taken, queued=False, check_again=False)
            results += group.results
            if group.trouble is not None:
                _give_up(worker, taken)
                return Group(results, group.trouble)
            taken = []
            groups += 1
        worker.queue.hand_over_kicked()
        return Group(results)
    except SinkUnavailable as exc:  # the set lives on the sink's Redis: an outage, not a bug
        worker.gate.failed(str(exc))
        _give_up(worker, taken)
        return Group(results, str(exc))
    except BaseException:
        _give_up(worker, taken)
        raise


def _give_up(worker: Worker, taken: list[uuid.UUID]) -> None:
    # Best effort on a failing path: runs that cannot go back are still pending in the
    # database, and dispatch drains them; a mark that cannot be released expires.
    try:
        worker.kicked.put_back(taken)
    except SinkUnavailable as exc:
        logger.warning("kicked drain: could not put %d runs back: %s", len(taken), exc)
    try:
        worker.kicked.release()
    except SinkUnavailable as exc:
        logger.warning("kicked drain: could not release its mark (it expires): %s", exc)


@dataclasses.dataclass(frozen=True)
class DispatchResult:
    """Runs found with pending events, and how many of them this pass queued a drain for."""

    found: int
    enqueued: int
    unavailable: str | None = None  # "sink" or "database": this pass could do nothing

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form that ``outbox.dispatch`` returns."""
        report: dict[str, Any] = {"found": self.found, "enqueued": self.enqueued}
        return report | ({"unavailable": self.unavailable} if self.unavailable else {})


def dispatch(worker: Worker) -> DispatchResult:
    """Look at up to ``dispatch_limit`` due runs with pending events; queue drains for them.

    Each pass starts where the previous one stopped, in run id order, and wraps around, so a
    backlog of queued runs never hides the runs behind it. While the sink is down, dispatch
    does nothing but check it now and then (see ``tasks.outages``).
    """
    page: list[uuid.UUID] = []
    try:
        tick = worker.gate.before_dispatch()
        if not tick.go:
            return DispatchResult(0, 0, "sink")
        limit = worker.limits.dispatch_limit
        try:
            after = worker.cursor.dispatch_cursor()
            page = worker.store.find_pending(limit, after=after)
            if len(page) < limit and after is not None:  # the end: wrap around
                seen = set(page)
                page += [r for r in worker.store.find_pending(limit - len(page)) if r not in seen]
            next_start = page[-1] if len(page) >= limit else None
            worker.cursor.set_dispatch_cursor(next_start, worker.queue.ttl)
            enqueued = worker.queue.drain(page)
        except SinkUnavailable as exc:
            worker.gate.failed(str(exc), tick)
            worker.store.record_outage(page or worker.store.find_pending(limit), str(exc))
            return DispatchResult(len(page), 0, "sink")
        worker.gate.succeeded(tick)
    except StoreUnavailable as exc:
        worker.database.failed(exc)
        return DispatchResult(len(page), 0, "database")
    worker.database.succeeded()
    return DispatchResult(len(page), enqueued)
