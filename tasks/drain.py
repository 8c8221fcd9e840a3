"""The drain: move committed events from the outbox tables into the sink, exactly once.

Plain functions over a session factory and a publisher; they import neither Celery nor redis.
One transaction per batch: lock the runs' cursors (skipping runs another drainer holds), read
each run's next events in seq order, publish them in one round trip, mark them published and
advance the cursors, commit. A crash anywhere before the commit leaves the cursors where they
were; the next drain re-publishes and the sink drops what it already has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from models.ids import parse_run_id
from tasks import errors, sql
from tasks.settings import Settings
from tasks.streams import Entry, Publisher

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]


class Status(enum.StrEnum):
    """What a drain of one run ended with."""

    DRAINED = "drained"  # nothing left
    MORE = "more"  # a batch limit was hit; more remains
    LOCKED = "locked"  # another drainer holds the run; nothing done
    MISSING = "missing"  # no such run
    STALLED = "stalled"  # parked after repeated failures; `outbox resume` restarts it


@dataclasses.dataclass(frozen=True)
class DrainResult:
    """The outcome of draining one run."""

    run_id: uuid.UUID
    status: Status
    published: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form that the tasks and the CLI report."""
        result: dict[str, Any] = {
            "run_id": str(self.run_id),
            "status": self.status.value,
            "published": self.published,
        }
        if self.error is not None:
            result["error"] = self.error
        return result


@dataclasses.dataclass(frozen=True)
class PassResult:
    """The outcome of one pass over every run with pending events."""

    status: Status  # DRAINED when no active run had pending events left at the end
    published: int
    runs: int  # runs found with pending events at the start of the pass
    failed: int = 0  # runs whose publish failed during the pass

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form that the CLI reports."""
        return dataclasses.asdict(self) | {"status": self.status.value}


@dataclasses.dataclass
class BatchOutcome:
    """What one batch did for one run."""

    status: Status
    published: int = 0
    next_seq: int = 0
    full: bool = False  # the batch hit a limit, so more events may follow at once
    error: str | None = None  # the sink refused this run's entries


def drain_batch(
    session_factory: SessionFactory,
    publisher: Publisher,
    run_ids: Sequence[uuid.UUID],
    settings: Settings,
) -> dict[uuid.UUID, BatchOutcome]:
    """Publish the next batch of each run in ``run_ids``, all in one transaction.

    Runs another transaction holds come back ``locked``, runs that do not exist ``missing``,
    parked runs ``stalled``, the rest ``drained`` with what they published (``full`` when the
    batch hit a limit). A run whose entries the sink refused keeps its cursor, gets the failure
    recorded (parked as ``stalled`` after ``settings.max_attempts``), and the other runs'
    batches still commit.

    Raises
    ------
    TransientPublishError
        The sink was unreachable; nothing was committed. The error is noted on the runs
        (``last_error``) but not counted towards parking them: an outage is nobody's fault.
    """
    ids = sorted(set(run_ids))
    outcomes: dict[uuid.UUID, BatchOutcome] = {}
    active: dict[uuid.UUID, int] = {}  # run id -> cursor, for the runs this batch holds
    try:
        return _drain_locked(session_factory, publisher, ids, settings, outcomes, active)
    except errors.TransientPublishError as exc:
        _record_outage(session_factory, list(active), str(exc))
        raise


def _drain_locked(
    session_factory: SessionFactory,
    publisher: Publisher,
    ids: list[uuid.UUID],
    settings: Settings,
    outcomes: dict[uuid.UUID, BatchOutcome],
    active: dict[uuid.UUID, int],
) -> dict[uuid.UUID, BatchOutcome]:
    with session_factory() as session, session.begin():
        locked = session.execute(sql.LOCK_RUNS, {"run_ids": ids}).scalars().all()
        cursors = session.execute(sql.LOCK_CURSORS, {"run_ids": locked}).all()
        for cursor in cursors:
            if cursor.status == "stalled":
                outcomes[cursor.run_id] = BatchOutcome(Status.STALLED)
            else:
                active[cursor.run_id] = cursor.next_seq
                outcomes[cursor.run_id] = BatchOutcome(Status.DRAINED, next_seq=cursor.next_seq)
        skipped = [rid for rid in ids if rid not in outcomes]
        if skipped:
            existing = set(session.execute(sql.EXISTING_RUNS, {"run_ids": skipped}).scalars())
            for rid in skipped:
                outcomes[rid] = BatchOutcome(Status.LOCKED if rid in existing else Status.MISSING)
        if not active:
            return outcomes
        # The batch budget is per transaction, shared by the runs in it: a group of many small
        # runs and one deep run make transactions of the same size.
        per_run = max(1, settings.batch_size // len(active))
        rows = session.execute(
            sql.READ_BATCH,
            {
                "run_ids": list(active),
                "next_seqs": list(active.values()),
                "batch_size": per_run,
                "max_bytes": settings.batch_max_bytes,
            },
        ).all()
        if not rows:
            return outcomes
        # Result rows have the Entry attributes: no per-event object on the hot path.
        result = publisher.publish(cast(Sequence[Entry], rows))
        event_ids: list[int] = []
        for rid, group in itertools.groupby(rows, key=lambda r: r.run_id):
            batch = list(group)
            outcome = outcomes[rid]
            if rid in result.failed:
                outcome.error = result.failed[rid]
                continue
            event_ids.extend(r.id for r in batch)
            outcome.published = len(batch)
            outcome.next_seq = batch[-1].seq + 1
            # `fetched` counts the run's rows before the byte cut: a cut or a full batch means
            # more may be waiting.
            outcome.full = batch[0].fetched >= per_run or len(batch) < batch[0].fetched
        done = [rid for rid, o in outcomes.items() if o.published]
        session.execute(
            sql.MARK_PUBLISHED,
            {
                "event_ids": event_ids,
                "run_ids": done,
                "next_seqs": [outcomes[rid].next_seq for rid in done],
            },
        )
        for rid, message in result.failed.items():
            logger.warning("publish refused for run %s: %s", rid, message)
            if _record_failure(session, [rid], message, settings):
                outcomes[rid].status = Status.STALLED
    logger.info("published %d events of %d runs", len(event_ids), len(done))
    return outcomes


def _record_failure(
    session: Session, run_ids: list[uuid.UUID], error: str, settings: Settings
) -> list[uuid.UUID]:
    """Count a failed attempt against ``run_ids``; return the runs it parked."""
    rows = session.execute(
        sql.RECORD_FAILURE,
        {"run_ids": run_ids, "error": error[:2000], "max_attempts": settings.max_attempts},
    ).all()
    parked = [r.run_id for r in rows if r.status == "stalled"]
    for rid in parked:
        logger.error(
            "run %s stalled after %d failed attempts: %s", rid, settings.max_attempts, error
        )
    return parked


def _record_outage(session_factory: SessionFactory, run_ids: list[uuid.UUID], error: str) -> None:
    # The batch's transaction is gone, so this is a new one; best effort, since the database
    # may be down too.
    try:
        with session_factory() as session, session.begin():
            session.execute(sql.RECORD_OUTAGE, {"run_ids": run_ids, "error": error[:2000]})
    except Exception:
        logger.exception("could not note the sink outage on %d runs", len(run_ids))


def runs_with_more(
    session_factory: SessionFactory, cursors: dict[uuid.UUID, int]
) -> set[uuid.UUID]:
    """Return the runs of ``cursors`` with events at or after their cursor."""
    if not cursors:
        return set()
    params = {"run_ids": list(cursors), "next_seqs": list(cursors.values())}
    with _autocommit(session_factory) as connection:
        return set(connection.execute(sql.RUNS_WITH_MORE, params).scalars())


@contextlib.contextmanager
def _autocommit(session_factory: SessionFactory) -> Iterator[Connection]:
    # A lone read needs no transaction: autocommit spares the BEGIN and ROLLBACK round trips.
    with session_factory() as session:
        yield session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def drain_outbox_for_runs(
    run_ids: Sequence[uuid.UUID | str],
    *,
    session_factory: SessionFactory | None = None,
    publisher: Publisher | None = None,
    settings: Settings | None = None,
    check_again: bool = True,
) -> list[DrainResult]:
    """Drain several runs together now, in this process; one result per run, in order.

    Each transaction moves up to ``settings.batch_size`` events shared across the runs still
    draining, for up to ``settings.max_batches`` transactions; runs left over are ``more``.
    A run whose entries the sink refused comes back ``more`` with its ``error`` (or
    ``stalled`` once parked); the other runs go on.

    After a short batch a run is usually drained, but a producer may have committed while
    this drain held it, and its kick found the run ``locked``: with ``check_again``, each such
    run is looked at once more, without locks, after the commit. (The kicked drain does not
    need to: a kick during its hold puts the run back in the set it drains.)

    Raises
    ------
    InvalidRunId
        One of ``run_ids`` is not a UUID.
    TransientPublishError
        The sink was unreachable (noted on the runs, not counted towards parking them).
    """
    ids = list(dict.fromkeys(parse_run_id(r) for r in run_ids))
    session_factory, publisher, settings = _collaborators(session_factory, publisher, settings)
    published = dict.fromkeys(ids, 0)
    ended: dict[uuid.UUID, tuple[Status, str | None]] = {}
    todo = ids
    for _ in range(settings.max_batches):
        if not todo:
            break
        outcomes = drain_batch(session_factory, publisher, todo, settings)
        todo, short = [], {}
        for rid, outcome in outcomes.items():
            published[rid] += outcome.published
            if outcome.error is not None:
                ended[rid] = (
                    outcome.status if outcome.status is Status.STALLED else Status.MORE,
                    outcome.error,
                )
            elif outcome.status is not Status.DRAINED:
                ended[rid] = (outcome.status, None)
            elif outcome.full:
                todo.append(rid)
            else:
                short[rid] = outcome.next_seq
        more = runs_with_more(session_factory, short) if check_again else set()
        for rid in short:
            if rid in more:
                todo.append(rid)
            else:
                ended[rid] = (Status.DRAINED, None)
    for rid in todo:
        ended[rid] = (Status.MORE, None)
    return [DrainResult(rid, ended[rid][0], published[rid], ended[rid][1]) for rid in ids]


def drain_outbox_for_run(
    run_id: uuid.UUID | str,
    *,
    session_factory: SessionFactory | None = None,
    publisher: Publisher | None = None,
    settings: Settings | None = None,
) -> DrainResult:
    """Drain one run now, in this process, for up to ``settings.max_batches`` batches.

    Returns ``drained``, ``more`` (the batch limit was hit), ``locked``, ``missing`` or
    ``stalled``, with the number of events published.

    Raises
    ------
    InvalidRunId
        ``run_id`` is not a UUID.
    PublishError
        The sink refused the run's entries (the attempt is recorded; the run is parked, and
        ``stalled`` returned instead, once ``settings.max_attempts`` is reached).
    TransientPublishError
        The sink was unreachable (noted on the run, not counted towards parking it).
    """
    [result] = drain_outbox_for_runs(
        [run_id], session_factory=session_factory, publisher=publisher, settings=settings
    )
    if result.error is not None and result.status is not Status.STALLED:
        raise errors.PublishError(f"run {result.run_id}: {result.error}")
    return result


def find_pending_runs(
    session_factory: SessionFactory, limit: int, *, after: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Return up to ``limit`` active runs with unpublished events, in run id order.

    With ``after``, the runs after that id: the next page of a scan.
    """
    with _autocommit(session_factory) as connection:
        if after is None:
            return list(connection.execute(sql.FIND_PENDING, {"limit": limit}).scalars())
        params = {"limit": limit, "after": after}
        return list(connection.execute(sql.FIND_PENDING_AFTER, params).scalars())


def drain_outbox_once(
    *,
    session_factory: SessionFactory | None = None,
    publisher: Publisher | None = None,
    settings: Settings | None = None,
) -> PassResult:
    """Make one pass over every active run with pending events, ``group_size`` runs at a time.

    A run whose publish fails is recorded and left for later; the other runs go on.
    """
    session_factory, publisher, settings = _collaborators(session_factory, publisher, settings)
    pending = find_pending_runs(session_factory, settings.dispatch_limit)
    published = 0
    failed = 0
    for start in range(0, len(pending), settings.group_size):
        group = pending[start : start + settings.group_size]
        try:
            results = drain_outbox_for_runs(
                group, session_factory=session_factory, publisher=publisher, settings=settings
            )
        except errors.TransientPublishError as exc:
            logger.warning("publish failed for %d runs: %s", len(group), exc)
            failed += len(group)
            continue
        published += sum(r.published for r in results)
        failed += sum(1 for r in results if r.error is not None)
    left = find_pending_runs(session_factory, 1)
    return PassResult(
        status=Status.MORE if left else Status.DRAINED,
        published=published,
        runs=len(pending),
        failed=failed,
    )


def resume(
    run_ids: Sequence[uuid.UUID | str] | None,
    *,
    session_factory: SessionFactory | None = None,
) -> list[uuid.UUID]:
    """Un-park stalled runs (all of them when ``run_ids`` is None); return the runs resumed."""
    factory = session_factory or _default_session_factory()
    with factory() as session, session.begin():
        if run_ids is None:
            return list(session.execute(sql.RESUME_ALL).scalars())
        ids = [parse_run_id(r) for r in run_ids]
        return list(session.execute(sql.RESUME, {"run_ids": ids}).scalars())


def _default_session_factory() -> SessionFactory:
    from tasks import runtime

    return runtime.current().session_factory


def _collaborators(
    session_factory: SessionFactory | None,
    publisher: Publisher | None,
    settings: Settings | None,
) -> tuple[SessionFactory, Publisher, Settings]:
    if session_factory is not None and publisher is not None and settings is not None:
        return session_factory, publisher, settings
    from tasks import runtime  # the process-wide defaults, built from the environment

    current = runtime.current()
    return (
        session_factory or current.session_factory,
        publisher or current.publisher,
        settings or current.settings,
    )
