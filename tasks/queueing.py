"""The one way a drain is queued: claim the marks, send the task, release the marks on failure.

Dispatch, follow-ups of drains that hit their batch limit, producers' kicks and the kicked
drain's hand-over all come through ``DrainQueue``. A mark says "a drain of this is queued"
and keeps a second one out of the broker; it expires after ``ttl`` seconds, so a drain lost
with its message (a killed worker, a restarted broker) holds its runs back for that long at
most, and a failed send never leaves a mark behind.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from tasks.errors import SinkUnavailable

logger = logging.getLogger(__name__)


class Marks(Protocol):
    """Per-run queued marks (``tasks.redis_marks.QueuedMarks``)."""

    def claim(self, run_ids: Sequence[uuid.UUID], ttl: int) -> list[uuid.UUID]: ...
    def release(self, run_ids: Sequence[uuid.UUID]) -> None: ...


class Kicked(Protocol):
    """The kicked runs' set and the mark of its drain (``tasks.redis_marks.KickedSet``)."""

    def add(self, run_ids: Sequence[uuid.UUID], ttl: int) -> bool: ...
    def hold(self, ttl: int) -> None: ...
    def release(self) -> None: ...


class Sender(Protocol):
    """Sends the drain tasks to the broker (``tasks.outbox.CelerySender``)."""

    def send_drain(self, run_ids: Sequence[uuid.UUID]) -> None: ...
    def send_kicked(self) -> None: ...


class DrainQueue:
    """Queues drains, at most one per run (and one of the kicked set) until it starts."""

    def __init__(
        self, marks: Marks, kicked: Kicked, sender: Sender, *, group_size: int, ttl: int
    ) -> None:
        self.marks = marks
        self.kicked = kicked
        self.sender = sender
        self.group_size = group_size
        self.ttl = ttl

    def drain(self, run_ids: Sequence[uuid.UUID]) -> int:
        """Queue drains, ``group_size`` runs a task, of the runs with none queued; return how many.

        Raises what claiming or sending raised, after releasing the marks of the runs whose
        drain was not sent.
        """
        claimed = self.marks.claim(run_ids, self.ttl)
        sent = 0
        try:
            for start in range(0, len(claimed), self.group_size):
                group = claimed[start : start + self.group_size]
                self.sender.send_drain(group)
                sent += len(group)
        except BaseException:
            self._undo(lambda: self.marks.release(claimed[sent:]))
            raise
        return len(claimed)

    def started(self, run_ids: Sequence[uuid.UUID]) -> None:
        """A drain of ``run_ids`` has started: from now on another may be queued."""
        self.marks.release(run_ids)

    def kick(self, run_ids: Sequence[uuid.UUID]) -> bool:
        """Add ``run_ids`` to the kicked set; queue its drain unless one is queued or running.

        Returns True if this call queued the drain.
        """
        if not self.kicked.add(run_ids, self.ttl):
            return False
        self._send_kicked()
        return True

    def hand_over_kicked(self) -> None:
        """Queue a successor of the running kicked drain, which keeps the mark held."""
        self.kicked.hold(self.ttl)
        self._send_kicked()

    def _send_kicked(self) -> None:
        try:
            self.sender.send_kicked()
        except BaseException:
            self._undo(self.kicked.release)  # not queued after all: let the next kick try
            raise

    @staticmethod
    def _undo(release: Callable[[], None]) -> None:
        # Best effort inside a failure: a mark this cannot release expires after the TTL.
        try:
            release()
        except SinkUnavailable as exc:
            logger.warning("could not release queued marks (they expire by themselves): %s", exc)


class Kicker:
    """A producer's kick, bounded: after a failure, kicks are skipped for ``pause`` seconds.

    The events are committed already when a kick runs, and beat's dispatch drains them if no
    kick does, so a kick never raises. Its calls have short timeouts of their own; the pause
    makes a Redis or broker that is down or black-holed cost one timeout per ``pause``, not
    one per commit.
    """

    def __init__(
        self,
        queue: Callable[[], DrainQueue],
        pause: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = queue  # called once, on the first kick
        self._queue: DrainQueue | None = None
        self.pause = pause
        self._clock = clock
        self._paused_until = float("-inf")

    def __call__(self, run_ids: Sequence[uuid.UUID]) -> None:
        now = self._clock()
        if now < self._paused_until:
            return
        try:
            if self._queue is None:
                self._queue = self._build()
            self._queue.kick(run_ids)
        except Exception as exc:  # noqa: BLE001 - a kick never fails a committed transaction
            self._paused_until = now + self.pause
            logger.warning(
                "could not kick a drain (%s: %s); kicks paused for %gs, beat's dispatch "
                "drains the runs",
                type(exc).__name__,
                exc,
                self.pause,
            )
