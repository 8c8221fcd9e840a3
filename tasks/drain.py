"""The drain: move committed events from the outbox tables into the sink, exactly once.

One transaction per batch, over a store (``tasks.store``) and a sink (``tasks.sink``) that the
caller passes in; this module knows neither Celery nor Redis nor SQL:

1. lock the runs' cursors, skipping runs another drainer holds;
2. read each run's next events from its cursor, in seq order;
3. publish them (the sink skips entries it holds already);
4. mark what the sink now holds published and advance those cursors; record the runs the
   sink refused (parked after ``max_attempts``) or found in conflict (parked at once);
5. commit.

A crash before the commit leaves the cursors where they were; the next drain publishes again
and the sink reports those entries as present. A sink that is unavailable as a whole rolls
the batch back, is noted on the runs without counting against them, and ends the drain.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from tasks import retry
from tasks.errors import SinkUnavailable, StoreUnavailable
from tasks.sink import Sink
from tasks.store import Batch, Locked, Store

logger = logging.getLogger(__name__)


class Status(enum.StrEnum):
    """What a drain of one run ended with."""

    DRAINED = "drained"  # nothing left
    MORE = "more"  # a batch limit was hit, or the sink failed: more remains
    LOCKED = "locked"  # another drainer holds the run; nothing done
    MISSING = "missing"  # no such run
    STALLED = "stalled"  # parked after repeated failures; `outbox resume` restarts it


class Fault(enum.StrEnum):
    """Why the sink did not take a run's batch."""

    REFUSED = "refused"  # an answer about the run's entries: counts towards parking it
    CONFLICT = "conflict"  # an entry id holds another event: parked at once
    OUTAGE = "outage"  # the sink as a whole was unavailable: retried, never counted


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much one drain does; ``tasks.settings.Settings.limits`` reads them from the env."""

    batch_size: int = 500  # events per transaction, shared by the runs in it
    batch_max_bytes: int = 4 * 1024 * 1024  # per run and transaction, type and payload
    max_batches: int = 20  # transactions per drain
    max_attempts: int = 10  # refusals before a run is parked
    group_size: int = 50  # runs drained together
    dispatch_limit: int = 10_000  # pending runs looked at per pass


@dataclasses.dataclass(frozen=True)
class DrainResult:
    """The outcome of draining one run."""

    run_id: uuid.UUID
    status: Status
    published: int = 0  # entries the sink added
    already_present: int = 0  # entries it held already (a repeat after a crash)
    error: str | None = None
    fault: Fault | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form that the tasks and the CLI report."""
        result: dict[str, Any] = {
            "run_id": str(self.run_id),
            "status": self.status.value,
            "published": self.published,
            "already_present": self.already_present,
        }
        if self.error is not None:
            result["error"] = self.error
        if self.fault is not None:
            result["fault"] = self.fault.value
        return result


@dataclasses.dataclass(frozen=True)
class PassResult:
    """The outcome of one pass over every active run with pending events."""

    status: Status  # DRAINED when no active run had pending events left at the end
    published: int
    already_present: int
    runs: int  # runs found with pending events at the start of the pass
    failed: int = 0  # runs the sink refused, or could not take, during the pass
    outage: str | None = None  # the sink became unavailable and the pass stopped

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form that the CLI reports."""
        result = dataclasses.asdict(self) | {"status": self.status.value}
        if self.outage is None:
            del result["outage"]
        return result


@dataclasses.dataclass
class _Outcome:
    """What one batch did for one run."""

    status: Status
    published: int = 0
    present: int = 0
    next_seq: int = 0
    full: bool = False  # the batch hit a limit, so more events may follow at once
    error: str | None = None
    fault: Fault | None = None


def drain_batch(
    store: Store, sink: Sink, run_ids: Sequence[uuid.UUID], limits: Limits
) -> dict[uuid.UUID, _Outcome]:
    """Publish the next batch of each run in ``run_ids``, all in one transaction.

    When the sink is unavailable, nothing is committed: the runs the batch would have
    published end ``more`` with the ``outage`` fault (noted on them, not counted against
    them), while the others keep what the lock found (``locked``, ``missing``, ``stalled``).
    """
    active: list[uuid.UUID] = []
    outcomes: dict[uuid.UUID, _Outcome] = {}
    try:
        with store.batch() as batch:
            locked = batch.lock(run_ids)
            for run_id in run_ids:
                cursor = locked.held.get(run_id)
                if cursor is None:
                    busy = run_id in locked.busy
                    outcomes[run_id] = _Outcome(Status.LOCKED if busy else Status.MISSING)
                elif cursor.stalled:
                    outcomes[run_id] = _Outcome(Status.STALLED)
                else:
                    outcomes[run_id] = _Outcome(Status.DRAINED, next_seq=cursor.next_seq)
                    active.append(run_id)
            if active:
                _publish(batch, sink, locked, {r: outcomes[r] for r in active}, limits)
    except SinkUnavailable as exc:
        _note_outage(store, active, str(exc))
        for run_id in active:
            outcomes[run_id] = _Outcome(Status.MORE, error=str(exc), fault=Fault.OUTAGE)
        return outcomes
    moved = [o for o in outcomes.values() if o.published or o.present]
    if moved:  # committed
        events = sum(o.published + o.present for o in moved)
        logger.debug("published %d events of %d runs", events, len(moved))
    return outcomes


def _publish(
    batch: Batch, sink: Sink, locked: Locked, outcomes: dict[uuid.UUID, _Outcome], limits: Limits
) -> None:
    """Steps 2 to 4 for the ``outcomes``' runs, which ``batch`` holds: read, publish, record."""
    per_run = max(1, limits.batch_size // len(outcomes))
    cursors = {run_id: outcome.next_seq for run_id, outcome in outcomes.items()}
    rows = batch.read(cursors, per_run, limits.batch_max_bytes)
    if not rows:
        return
    result = sink.publish(rows)
    event_ids: list[int] = []
    next_seqs: dict[uuid.UUID, int] = {}
    for run_id, group in itertools.groupby(rows, key=lambda r: r.run_id):
        if run_id not in result.added:
            continue
        run_rows = list(group)
        event_ids.extend(r.id for r in run_rows)
        next_seqs[run_id] = run_rows[-1].seq + 1
        outcome = outcomes[run_id]
        outcome.published = result.added[run_id]
        outcome.present = result.present[run_id]
        outcome.next_seq = next_seqs[run_id]
        # `fetched` counts the run's rows before the byte cut: a cut or a full batch means
        # more may be waiting.
        fetched = run_rows[0].fetched
        outcome.full = fetched >= per_run or len(run_rows) < fetched
    if next_seqs:
        batch.mark_published(event_ids, next_seqs)
    if result.refused:
        attempts = {run_id: locked.held[run_id].attempts + 1 for run_id in result.refused}
        delays = {run_id: retry.refusal_delay(n) for run_id, n in attempts.items()}
        parked = batch.record_refusals(result.refused, delays, limits.max_attempts)
        for run_id, error in result.refused.items():
            status = Status.STALLED if run_id in parked else Status.MORE
            _failed(outcomes[run_id], status, error, Fault.REFUSED)
            logger.warning("sink refused run %s (attempt %d): %s", run_id, attempts[run_id], error)
    if result.conflicts:
        batch.park(result.conflicts)
        for run_id, error in result.conflicts.items():
            _failed(outcomes[run_id], Status.STALLED, error, Fault.CONFLICT)
            logger.error("run %s parked: %s", run_id, error)


def _failed(outcome: _Outcome, status: Status, error: str, fault: Fault) -> None:
    outcome.status, outcome.error, outcome.fault = status, error, fault


def _note_outage(store: Store, run_ids: list[uuid.UUID], error: str) -> None:
    # The batch's transaction is gone, so this is a new one; best effort, since the database
    # may be down too, and the outage is what the caller must hear about.
    try:
        store.record_outage(run_ids, error)
    except StoreUnavailable as exc:
        logger.warning("could not note the sink outage on %d runs: %s", len(run_ids), exc)


@dataclasses.dataclass
class _Progress:
    published: int = 0
    present: int = 0
    ended: tuple[Status, str | None, Fault | None] | None = None


def drain_runs(
    store: Store,
    sink: Sink,
    run_ids: Sequence[uuid.UUID],
    limits: Limits,
    *,
    check_again: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[DrainResult]:
    """Drain several runs together, for up to ``limits.max_batches`` batches; one result each.

    Runs left over are ``more``; so are runs the sink refused (with their ``error``, or
    ``stalled`` once parked) and, when the sink became unavailable, every run not finished by
    then (with the ``outage`` fault). The other runs go on after a refusal.

    After a short batch a run is usually drained, but a producer may have committed while
    this drain held it, and a kick then found it locked: with ``check_again``, each such run
    is looked at once more, without locks, after the commit.

    ``should_stop`` is asked before each batch: once it says so (the worker is shutting
    down), the drain ends between two batches and the runs left over are ``more``.
    """
    ids = list(dict.fromkeys(run_ids))
    progress = {run_id: _Progress() for run_id in ids}
    todo = ids
    for _ in range(limits.max_batches):
        if not todo or should_stop():
            break
        outcomes = drain_batch(store, sink, todo, limits)
        todo, short = [], {}
        for run_id, outcome in outcomes.items():
            runs = progress[run_id]
            runs.published += outcome.published
            runs.present += outcome.present
            if outcome.error is not None or outcome.status is not Status.DRAINED:
                runs.ended = (outcome.status, outcome.error, outcome.fault)
            elif outcome.full:
                todo.append(run_id)
            else:
                short[run_id] = outcome.next_seq
        more = store.runs_with_more(short) if check_again else set()
        for run_id in short:
            if run_id in more:
                todo.append(run_id)
            else:
                progress[run_id].ended = (Status.DRAINED, None, None)
    for run_id in todo:
        progress[run_id].ended = (Status.MORE, None, None)
    results = []
    for run_id in ids:
        runs = progress[run_id]
        status, error, fault = runs.ended or (Status.MORE, None, None)
        results.append(DrainResult(run_id, status, runs.published, runs.present, error, fault))
    return results


def drain_pass(store: Store, sink: Sink, limits: Limits) -> PassResult:
    """Drain every active run with pending events once, ``group_size`` runs at a time.

    Runs waiting out a retry delay are included: this is a drain someone asked for now. A run
    the sink refuses is recorded and left for later; the others go on. An outage ends the pass.
    """
    pending = store.find_pending(limits.dispatch_limit, due_only=False)
    published = present = failed = 0
    outage = None
    for start in range(0, len(pending), limits.group_size):
        results = drain_runs(store, sink, pending[start : start + limits.group_size], limits)
        published += sum(r.published for r in results)
        present += sum(r.already_present for r in results)
        failed += sum(1 for r in results if r.fault is not None)
        outage = next((r.error for r in results if r.fault is Fault.OUTAGE), None)
        if outage is not None:
            break
    left = outage is not None or store.find_pending(1, due_only=False)
    return PassResult(
        status=Status.MORE if left else Status.DRAINED,
        published=published,
        already_present=present,
        runs=len(pending),
        failed=failed,
        outage=outage,
    )
