"""The Celery tasks: thin wrappers that build collaborators, call the drain logic and report.

``outbox.drain_run`` drains one run and re-queues itself while the run has more; failures of
the sink or the database are retried with exponential backoff and full jitter. ``outbox.dispatch``
is what beat runs: it queues one drain per run with pending events.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import InterfaceError, OperationalError

from models.ids import parse_run_id
from tasks import drain, errors, runtime
from tasks.celery_app import app
from tasks.dispatch import dispatch_pending

logger = get_task_logger(__name__)

# Failures that a later attempt may not meet: the sink refused or was unreachable (counted
# against the run, which is parked after OUTBOX_MAX_ATTEMPTS), or the database connection broke.
RETRYABLE = (errors.PublishError, OperationalError, InterfaceError)
BACKOFF_MAX_SECONDS = 60


def enqueue_drain(run_id: uuid.UUID) -> None:
    """Queue ``outbox.drain_run`` for ``run_id`` (callers hold its queued mark)."""
    drain_run.apply_async(args=(str(run_id),))


@app.task(name="outbox.drain_run", bind=True, max_retries=None)
def drain_run(self: Task[Any, Any], run_id: str) -> dict[str, Any]:
    """Drain one run; returns ``{"run_id", "status", "published"}``."""
    rid = parse_run_id(run_id)  # a malformed id fails the task at once: retrying cannot help
    current = runtime.current()
    # This message is being handled: from now on a new drain of the run may be queued.
    current.queued.release([rid])
    try:
        result = drain.drain_outbox_for_run(
            rid,
            session_factory=current.session_factory,
            publisher=current.publisher,
            settings=current.settings,
        )
    except RETRYABLE as exc:
        retries = self.request.retries or 0
        if retries + 1 >= current.settings.max_attempts:
            raise
        countdown = get_exponential_backoff_interval(
            factor=1, retries=retries, maximum=BACKOFF_MAX_SECONDS, full_jitter=True
        )
        logger.warning("drain of run %s failed, retry in %ss: %s", rid, countdown, exc)
        # The retry is a queued drain like any other: it takes the run's mark, and if another
        # drain is queued already, that one will do the work instead.
        if not current.queued.claim([rid], ttl=countdown + current.settings.queued_ttl):
            raise
        raise self.retry(exc=exc, countdown=countdown) from exc
    if result.status is drain.Status.MORE and current.queued.claim([rid]):
        enqueue_drain(rid)
    return result.as_dict()


@app.task(name="outbox.dispatch")
def dispatch() -> dict[str, Any]:
    """Queue a drain for each run with pending events; returns ``{"found", "enqueued"}``."""
    current = runtime.current()
    result = dispatch_pending(
        current.session_factory,
        current.queued,
        enqueue_drain,
        limit=current.settings.dispatch_limit,
    )
    if result.enqueued:
        logger.info("queued %d drains (%d runs pending)", result.enqueued, result.found)
    return result.as_dict()
