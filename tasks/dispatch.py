"""Dispatch: queue one drain for every run with pending events that has none queued."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

from tasks.drain import SessionFactory, find_pending_runs
from tasks.streams import QueuedDrains


@dataclasses.dataclass(frozen=True)
class DispatchResult:
    """How many runs had pending events, and how many drains this pass queued."""

    found: int
    enqueued: int

    def as_dict(self) -> dict[str, int]:
        """Return the JSON form that ``outbox.dispatch`` returns."""
        return dataclasses.asdict(self)


def dispatch_pending(
    session_factory: SessionFactory,
    queued: QueuedDrains,
    enqueue: Callable[[uuid.UUID], object],
    *,
    limit: int,
) -> DispatchResult:
    """Find runs with pending events and ``enqueue`` a drain for each that has none queued."""
    pending = find_pending_runs(session_factory, limit)
    claimed = queued.claim(pending)
    for position, run_id in enumerate(claimed):
        try:
            enqueue(run_id)
        except Exception:
            # Not queued after all: clear the marks, or those runs would wait for them to expire.
            queued.release(claimed[position:])
            raise
    return DispatchResult(found=len(pending), enqueued=len(claimed))
