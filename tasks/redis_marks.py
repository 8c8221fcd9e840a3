"""Queue bookkeeping in the sink's Redis: queued-drain marks, the dispatch cursor, kicked runs.

Every Redis error here becomes SinkUnavailable: these keys live on the sink's server, so a
failure is the sink's outage, and the task layer treats it as one (retried, never counted).
On a Redis Cluster the marks spread over the nodes (each command touches one key), and the
kicked set's three keys share a hash tag, so its scripts run on the one node that has them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from tasks import scripts
from tasks.redis_sink import ERRORS, Client, unavailable


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except ERRORS as exc:
        raise unavailable(exc) from exc


class QueuedMarks:
    """Marks of "a drain of this run is queued": ``<prefix><run_id>``, SET NX with a TTL."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, run_id: uuid.UUID) -> str:
        return f"{self.prefix}{run_id}"

    def claim(self, run_ids: Sequence[uuid.UUID], ttl: int) -> list[uuid.UUID]:
        """Set the marks of ``run_ids`` that are not set; return the runs whose mark this set."""
        if not run_ids:
            return []
        with _translated():
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.set(self._key(run_id), 1, nx=True, ex=ttl)
            replies = pipe.execute()
        return [run_id for run_id, ok in zip(run_ids, replies, strict=True) if ok]

    def release(self, run_ids: Sequence[uuid.UUID]) -> None:
        """Remove the marks of ``run_ids``."""
        # One DEL of many keys: a cluster client splits it by slot, one DEL per node.
        if run_ids:
            with _translated():
                self.client.delete(*(self._key(run_id) for run_id in run_ids))

    def dispatch_cursor(self) -> uuid.UUID | None:
        """Return the run id the last dispatch pass stopped at, if it stopped early."""
        with _translated():
            value = self.client.get(f"{self.prefix}dispatch-cursor")
        return uuid.UUID(value.decode()) if isinstance(value, bytes) else None

    def set_dispatch_cursor(self, run_id: uuid.UUID | None, ttl: int) -> None:
        """Record where the next dispatch pass starts (None: from the first run)."""
        key = f"{self.prefix}dispatch-cursor"
        with _translated():
            if run_id is None:
                self.client.delete(key)
            else:
                self.client.set(key, str(run_id), ex=ttl)


_KICK_CHUNK = 1000  # Lua's unpack() takes a few thousand values at most


class KickedSet:
    """Runs whose producers kicked a drain, and the mark of the one drain working on them.

    ``<prefix>{kicked}`` is the set, ``<prefix>{kicked}:queued`` the mark,
    ``<prefix>{kicked}:wake`` a one-entry list that kicks push to, so a drain waiting for more
    wakes at once. The braces are a Redis Cluster hash tag: the three keys, which kick.lua and
    finish_kicked.lua touch together, hash to one slot. (A prefix with braces of its own
    gives them its own tag instead: a hash tag is the text in the key's first ``{...}``, and
    that lies in ``<prefix>{kicked}``, which the three keys begin with.) A single server
    ignores the braces.
    """

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.members = f"{prefix}{{kicked}}"
        self.mark = f"{prefix}{{kicked}}:queued"
        self.wake = f"{prefix}{{kicked}}:wake"
        self._add = client.register_script(scripts.source("kick"))
        self._finish = client.register_script(scripts.source("finish_kicked"))

    def add(self, run_ids: Sequence[uuid.UUID], ttl: int) -> bool:
        """Add ``run_ids``; return True if this set the mark: the caller queues the drain."""
        keys = (self.members, self.mark, self.wake)
        ids = [str(run_id) for run_id in run_ids]
        queue = False
        with _translated():
            for start in range(0, len(ids), _KICK_CHUNK):
                part = ids[start : start + _KICK_CHUNK]
                queue |= bool(self._add(keys=keys, args=[ttl, *part]))
        return queue

    def take(self, count: int) -> list[uuid.UUID]:
        """Remove and return up to ``count`` kicked runs."""
        with _translated():
            members: Any = self.client.spop(self.members, count)
        return [uuid.UUID(member.decode()) for member in members or ()]

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a kick; return True if one came."""
        with _translated():
            return self.client.blpop([self.wake], timeout=timeout) is not None

    def finish(self) -> bool:
        """Clear the mark if no run is waiting, and return True; False: take more first."""
        with _translated():
            return bool(self._finish(keys=(self.members, self.mark, self.wake)))

    def put_back(self, run_ids: Sequence[uuid.UUID]) -> None:
        """Return runs a drain took and did not finish, for the next drain of the set."""
        if run_ids:
            with _translated():
                self.client.sadd(self.members, *(str(run_id) for run_id in run_ids))

    def hold(self, ttl: int) -> None:
        """Set the mark for ``ttl`` seconds: a drain of the set is running or on its way."""
        with _translated():
            self.client.set(self.mark, 1, ex=ttl)

    def release(self) -> None:
        """Clear the mark: the next kick queues a drain."""
        with _translated():
            self.client.delete(self.mark)
