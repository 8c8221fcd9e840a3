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
    """Queue drains for up to ``limit`` runs with pending events and no drain queued.

    Scans the pending runs page by page, so runs whose drains are already queued never hide
    the runs behind them.
    """
    found = enqueued = 0
    after: uuid.UUID | None = None
    while enqueued < limit:
        page = find_pending_runs(session_factory, limit, after=after)
        found += len(page)
        enqueued += queue_drains(queued, page, enqueue, group_size=group_size)
        if len(page) < limit:
            break
        after = page[-1]
    return DispatchResult(found=found, enqueued=enqueued)
