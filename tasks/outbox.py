"""The Celery tasks: thin wrappers that build collaborators, call the drain logic and report.

``outbox.drain_run`` drains one run (what `celery call` uses), ``outbox.drain_runs`` drains a
group of runs (what dispatch queues, so many small runs cost few tasks), ``outbox.drain_kicked``
drains the runs producers kicked on commit, and ``outbox.dispatch`` is what beat runs. Drains
re-queue the runs that have more; failures of the sink or the database are retried with
exponential backoff and full jitter.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterable
from typing import Any, NoReturn

from celery import Task
from celery.utils.log import get_task_logger
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import InterfaceError, OperationalError

from models.ids import parse_run_id
from tasks import drain, errors, runtime
from tasks.celery_app import app
from tasks.dispatch import dispatch_pending, queue_drains
from tasks.streams import KickedRuns

logger = get_task_logger(__name__)

# Failures that a later attempt may not meet: the sink refused or was unreachable, or the
# database connection broke. Refusals count against the run, which is parked after
# OUTBOX_MAX_ATTEMPTS; outages do not.
RETRYABLE = (errors.PublishError, OperationalError, InterfaceError)
BACKOFF_MAX_SECONDS = 60


def enqueue_drains(run_ids: list[uuid.UUID]) -> None:
    """Send one drain task for ``run_ids`` (the caller holds their queued marks)."""
    if len(run_ids) == 1:
        drain_run.apply_async(args=(str(run_ids[0]),))
    else:
        drain_runs.apply_async(args=([str(r) for r in run_ids],))


def kick(run_ids: Iterable[uuid.UUID]) -> None:
    """Have the runs whose producer just committed drained soon (``append_event(kick=True)``).

    The runs join the kicked set, and ``outbox.drain_kicked`` is queued unless one is queued
    or running already: kicks coalesce, so a task per commit never floods the broker and the
    workers.
    Never raises: the events are committed already, and beat's dispatch will drain them if
    the kick cannot be sent.
    """
    try:
        kicked = runtime.current().kicked
        if kicked.add(list(run_ids)):
            _queue_kicked_drain(kicked)
    except Exception:
        logger.warning("could not kick a drain; dispatch will pick the runs up", exc_info=True)


def _queue_kicked_drain(kicked: KickedRuns) -> None:
    """Send ``outbox.drain_kicked`` (the caller holds the kicked set's mark)."""
    try:
        drain_kicked.apply_async()
    except Exception:
        kicked.release()  # not queued after all: let the next kick try
        raise


def _backoff(retries: int) -> int:
    return int(
        get_exponential_backoff_interval(
            factor=1, retries=retries, maximum=BACKOFF_MAX_SECONDS, full_jitter=True
        )
    )


def _retry(task: Task[Any, Any], run_ids: list[uuid.UUID], exc: Exception) -> NoReturn:
    """Retry ``task`` for the runs that have no other drain queued; re-raise when none."""
    current = runtime.current()
    retries = task.request.retries or 0
    if retries + 1 >= current.settings.max_attempts:
        raise exc
    countdown = _backoff(retries)
    # The retry is a queued drain like any other, so it takes the runs' marks; runs that
    # already have a drain queued are left to it.
    claimed = current.queued.claim(run_ids, ttl=countdown + current.settings.queued_ttl)
    if not claimed:
        raise exc
    logger.warning("drain of %d runs failed, retry in %ss: %s", len(claimed), countdown, exc)
    args = (str(claimed[0]),) if task.name == drain_run.name else ([str(r) for r in claimed],)
    raise task.retry(args=args, exc=exc, countdown=countdown)


def _follow_up(results: list[drain.DrainResult]) -> None:
    """Re-queue runs with more to drain; give runs the sink refused a delayed retry of their own."""
    current = runtime.current()
    more = [r.run_id for r in results if r.status is drain.Status.MORE and r.error is None]
    queue_drains(current.queued, more, enqueue_drains, group_size=current.settings.group_size)
    refused = [r.run_id for r in results if r.status is drain.Status.MORE and r.error]
    for run_id in current.queued.claim(refused):
        drain_run.apply_async(args=(str(run_id),), countdown=_backoff(0))


def _drain(task: Task[Any, Any], run_ids: list[uuid.UUID]) -> list[drain.DrainResult]:
    """The body of both drain tasks: drain ``run_ids``, retry on failure, queue what follows."""
    current = runtime.current()
    # This message is being handled: from now on a new drain of these runs may be queued.
    current.queued.release(run_ids)
    sessions, publisher, settings = current.session_factory, current.publisher, current.settings
    try:
        if len(run_ids) == 1:  # a refusal raises, and this task retries with backoff
            results = [
                drain.drain_outbox_for_run(
                    run_ids[0], session_factory=sessions, publisher=publisher, settings=settings
                )
            ]
        else:  # a refusal leaves that run "more" with its error; _follow_up retries it alone
            results = drain.drain_outbox_for_runs(
                run_ids, session_factory=sessions, publisher=publisher, settings=settings
            )
    except RETRYABLE as exc:
        _retry(task, run_ids, exc)
    _follow_up(results)
    return results


@app.task(name="outbox.drain_run", bind=True, max_retries=None)
def drain_run(self: Task[Any, Any], run_id: str) -> dict[str, Any]:
    """Drain one run; returns ``{"run_id", "status", "published"}`` (and ``error``)."""
    # A malformed id fails the task at once: retrying cannot help.
    [result] = _drain(self, [parse_run_id(run_id)])
    return result.as_dict()


@app.task(name="outbox.drain_runs", bind=True, max_retries=None)
def drain_runs(self: Task[Any, Any], run_ids: list[str]) -> dict[str, Any]:
    """Drain a group of runs; returns ``{"runs", "published", "statuses"}``."""
    return _group_report(_drain(self, [parse_run_id(r) for r in run_ids]))


def _group_report(results: list[drain.DrainResult]) -> dict[str, Any]:
    return {
        "runs": len(results),
        "published": sum(r.published for r in results),
        "statuses": dict(collections.Counter(r.status.value for r in results)),
    }


@app.task(name="outbox.drain_kicked", bind=True, max_retries=None)
def drain_kicked(self: Task[Any, Any]) -> dict[str, Any]:
    """Drain the runs producers kicked, a group at a time; returns what ``drain_runs`` does.

    It holds the kicked set's mark until the set is empty, so kicks meanwhile add to its work
    instead of queueing more tasks. With the set empty it waits up to ``kick_linger`` seconds
    for another kick before it ends: under a steady trickle of commits one task keeps going,
    rather than one task per commit. After ``max_batches`` groups a successor takes over.
    """
    current = runtime.current()
    kicked, settings = current.kicked, current.settings
    # The mark was set when this task was queued; a chain of successors under steady load
    # must not outlive it, or kicks would start a second chain.
    kicked.hold(settings.queued_ttl)
    results: list[drain.DrainResult] = []
    groups = 0
    while groups < settings.max_batches:
        run_ids = kicked.take(settings.group_size)
        if not run_ids:
            if kicked.wait(settings.kick_linger) or not kicked.finish():
                continue  # a kick came: its runs are in the set now
            return _group_report(results)
        try:
            group = drain.drain_outbox_for_runs(
                run_ids,
                session_factory=current.session_factory,
                publisher=current.publisher,
                settings=settings,
                check_again=False,  # a kick while this drain held a run put it back in the set
            )
        except RETRYABLE as exc:
            kicked.put_back(run_ids)
            _retry_kicked(self, kicked, exc)
        _follow_up(group)
        results += group
        groups += 1
    _queue_kicked_drain(kicked)  # bounded work per task: a successor takes the mark over
    return _group_report(results)


def _retry_kicked(task: Task[Any, Any], kicked: KickedRuns, exc: Exception) -> NoReturn:
    """Retry ``outbox.drain_kicked`` with backoff, keeping the mark, or give the mark up."""
    retries = task.request.retries or 0
    if task.request.called_directly or retries + 1 >= runtime.current().settings.max_attempts:
        kicked.release()  # the runs stay kicked: the next kick, or beat's dispatch, drains them
        raise exc
    countdown = _backoff(retries)
    kicked.hold(countdown + runtime.current().settings.queued_ttl)
    logger.warning("drain of kicked runs failed, retry in %ss: %s", countdown, exc)
    raise task.retry(exc=exc, countdown=countdown)


@app.task(name="outbox.dispatch")
def dispatch() -> dict[str, Any]:
    """Queue drains for the runs with pending events; returns ``{"found", "enqueued"}``."""
    current = runtime.current()
    result = dispatch_pending(
        current.session_factory,
        current.queued,
        enqueue_drains,
        limit=current.settings.dispatch_limit,
        group_size=current.settings.group_size,
    )
    if result.enqueued:
        logger.info("queued drains of %d runs (%d pending)", result.enqueued, result.found)
    return result.as_dict()
