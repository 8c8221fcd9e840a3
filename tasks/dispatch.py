"""Queueing drains: one queued drain per run at most, whoever asks (beat's dispatch or a kick)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence

from tasks.drain import SessionFactory, find_pending_runs
from tasks.streams import QueuedDrains

Enqueue = Callable[[list[uuid.UUID]], object]


@dataclasses.dataclass(frozen=True)
class DispatchResult:
    """Runs found with pending events, and how many of them this pass queued a drain for."""

    found: int
    enqueued: int

    def as_dict(self) -> dict[str, int]:
        """Return the JSON form that ``outbox.dispatch`` returns."""
        return dataclasses.asdict(self)


def queue_drains(
    queued: QueuedDrains, run_ids: Sequence[uuid.UUID], enqueue: Enqueue, *, group_size: int
) -> int:
    """Queue drains, ``group_size`` runs a task, for the runs with none queued; return how many.

    A run's queued mark is taken before its drain is sent, so two callers racing for the same
    run queue it once.
    """
    claimed = queued.claim(run_ids)
    for start in range(0, len(claimed), group_size):
        try:
            enqueue(claimed[start : start + group_size])
        except Exception:
            # Not queued after all: clear the marks, or those runs would wait for them to expire.
            queued.release(claimed[start:])
            raise
    return len(claimed)


def dispatch_pending(
    session_factory: SessionFactory,
    queued: QueuedDrains,
    enqueue: Enqueue,
    *,
    limit: int,
    group_size: int,
) -> DispatchResult:
    """Look at up to ``limit`` runs with pending events; queue drains for those with none queued.

    Each pass starts where the previous one stopped, in run id order, and wraps around, so a
    backlog of queued runs never hides the runs behind it, and no pass costs more than
    ``limit`` runs' worth of work.
    """
    after = queued.dispatch_cursor()
    page = find_pending_runs(session_factory, limit, after=after)
    if len(page) < limit and after is not None:  # the end: wrap around to the first runs
        seen = set(page)
        wrapped = find_pending_runs(session_factory, limit - len(page))
        page += [run_id for run_id in wrapped if run_id not in seen]
    queued.set_dispatch_cursor(page[-1] if len(page) >= limit else None)
    enqueued = queue_drains(queued, page, enqueue, group_size=group_size)
    return DispatchResult(found=len(page), enqueued=enqueued)
