"""All Redis access: the stream publisher, reading streams back, queued-drain marks, kicks."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import redis

from tasks import errors

# Adds one run's batch in seq order with explicit ids "<seq>-0". Redis refuses an id that is not
# above the stream's top ("equal or smaller than the target stream top item"): that entry is
# already in the stream, so it is skipped. Any other error stops the script at that entry, so a
# failed entry is never followed by a later one: the stream never gets a gap that a retry could
# not fill. Returns the number of entries added.
_ADD_BATCH_LUA = """
local added = 0
for i = 1, #ARGV, 3 do
  local reply = redis.pcall('XADD', KEYS[1], ARGV[i] .. '-0', 'type', ARGV[i + 1],
                            'payload', ARGV[i + 2])
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then
      return redis.error_reply('seq ' .. ARGV[i] .. ': ' .. reply.err)
    end
  else
    added = added + 1
  end
end
return added
"""


class Entry(Protocol):
    """One event as the sink sees it (the drain passes its result rows as they are)."""

    @property
    def run_id(self) -> uuid.UUID: ...
    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def payload(self) -> str:  # JSON text
        ...


@dataclasses.dataclass(frozen=True)
class PublishOutcome:
    """What a publish did: entries added (duplicates excluded) and runs whose entries failed."""

    added: int = 0
    failed: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)


class Publisher(Protocol):
    """A sink that takes batches of entries, grouped by run and in seq order within a run."""

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        """Publish ``entries`` idempotently.

        Entries already in the sink are skipped, never duplicated. A run whose entries fail is
        listed in ``PublishOutcome.failed`` and none of its entries after the failed one are
        added. Raises TransientPublishError when the sink cannot be reached at all.
        """
        ...


def stream_key(prefix: str, run_id: uuid.UUID) -> str:
    """Return the Redis key of the run's stream."""
    return f"{prefix}{run_id}"


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """Return a Redis client for ``url`` with timeouts on every call."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class RedisStreamPublisher:
    """Publishes each run's entries to its own stream, one round trip per batch."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script_sha: str | None = None

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        by_run: dict[uuid.UUID, list[str | int]] = {}
        for entry in entries:
            by_run.setdefault(entry.run_id, []).extend((entry.seq, entry.type, entry.payload))
        if not by_run:
            return PublishOutcome()
        try:
            replies = self._run_scripts(by_run)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                # The server lost its script cache (a restart): load it again and re-send.
                # Re-sending is safe because adding an entry twice is a no-op.
                self._script_sha = None
                replies = self._run_scripts(by_run)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise errors.TransientPublishError(f"Redis unreachable: {exc}") from exc
        added = 0
        failed: dict[uuid.UUID, str] = {}
        for run_id, reply in zip(by_run, replies, strict=True):
            if isinstance(reply, Exception):
                failed[run_id] = str(reply)
            else:
                added += int(reply)
        return PublishOutcome(added=added, failed=failed)

    def _run_scripts(self, by_run: dict[uuid.UUID, list[str | int]]) -> list[Any]:
        if self._script_sha is None:
            self._script_sha = str(self.client.script_load(_ADD_BATCH_LUA))
        pipe = self.client.pipeline(transaction=False)
        for run_id, args in by_run.items():
            pipe.evalsha(self._script_sha, 1, stream_key(self.prefix, run_id), *args)
        return list(pipe.execute(raise_on_error=False))


@dataclasses.dataclass(frozen=True)
class StreamEntry:
    """An entry read back from a run's stream."""

    seq: int
    type: str
    payload: str


def _decode(entries: Iterable[Any]) -> list[StreamEntry]:
    return [
        StreamEntry(
            seq=int(entry_id.split(b"-", 1)[0]),
            type=fields.get(b"type", b"").decode(),
            payload=fields.get(b"payload", b"").decode(),
        )
        for entry_id, fields in entries
    ]


def read_stream(
    client: redis.Redis, prefix: str, run_id: uuid.UUID, *, after: int = 0, count: int = 1000
) -> list[StreamEntry]:
    """Return up to ``count`` entries of the run's stream with seq above ``after``."""
    entries: Any = client.xrange(stream_key(prefix, run_id), min=f"({after}-0", count=count)
    return _decode(entries)


def wait_stream(
    client: redis.Redis, prefix: str, run_id: uuid.UUID, *, after: int, block_ms: int
) -> list[StreamEntry]:
    """Block up to ``block_ms`` for entries with seq above ``after``."""
    key = stream_key(prefix, run_id)
    reply: Any = client.xread({key: f"{after}-0"}, block=block_ms, count=1000)
    return _decode(reply[0][1]) if reply else []


class QueuedDrains:
    """Marks of "a drain of this run is queued", so the queue never holds two of one run.

    A mark is set (SET NX) before a drain is enqueued and removed when that drain starts. It
    expires after ``ttl`` seconds, so a message lost by the broker never blocks a run for long.
    """

    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl

    def _key(self, run_id: uuid.UUID) -> str:
        return f"{self.prefix}{run_id}"

    def claim(self, run_ids: Sequence[uuid.UUID], *, ttl: int | None = None) -> list[uuid.UUID]:
        """Set the marks of ``run_ids`` that are not set; return the runs whose mark this set."""
        if not run_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.set(self._key(run_id), 1, nx=True, ex=ttl or self.ttl)
        return [run_id for run_id, ok in zip(run_ids, pipe.execute(), strict=True) if ok]

    def dispatch_cursor(self) -> uuid.UUID | None:
        """Return the run id the last dispatch pass stopped at, if it stopped early."""
        value = self.client.get(f"{self.prefix}dispatch-cursor")
        return uuid.UUID(value.decode()) if isinstance(value, bytes) else None

    def set_dispatch_cursor(self, run_id: uuid.UUID | None) -> None:
        """Record where the next dispatch pass starts (None: from the first run)."""
        key = f"{self.prefix}dispatch-cursor"
        if run_id is None:
            self.client.delete(key)
        else:
            self.client.set(key, str(run_id), ex=self.ttl)

    def release(self, run_ids: Sequence[uuid.UUID]) -> None:
        """Remove the marks of ``run_ids``: their queued drain has started."""
        if run_ids:
            self.client.delete(*(self._key(run_id) for run_id in run_ids))


# KEYS: the kicked set, its drain's mark, the drain's wake-up list; ARGV: the mark's TTL, then
# the run ids. Returns 1 when this call set the mark: no drain of the set was queued or
# running. Otherwise it wakes the drain, which may be waiting for more kicks.
_KICK_LUA = """
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then
  return 1
end
redis.call('LPUSH', KEYS[3], 1)
redis.call('LTRIM', KEYS[3], 0, 0)
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 0
"""
_KICK_CHUNK = 1000

# KEYS: the kicked set, its drain's mark, the wake-up list. Clears the mark only if no run is
# waiting; atomic with _KICK_LUA, so a kick lands either before (the drain goes on) or after
# (it queues a new drain).
_FINISH_LUA = """
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
return 0
"""


class KickedRuns:
    """Runs whose producers kicked a drain, and the mark of the one drain working on them.

    Kicks coalesce: each adds its runs to one set, and only a kick that finds the mark clear
    (SET NX) queues ``outbox.drain_kicked``. That drain holds the mark while it takes runs off
    the set in groups, and clears it only once the set is empty. However fast producers
    commit, one task at a time drains the kicked runs, in groups that grow with the load.
    The other kicks wake the drain up (a one-entry list it blocks on), so when the set is
    empty it can wait a moment for more instead of ending, and the next commit costs no task.
    """

    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        self.client = client
        self.members = f"{prefix}kicked"
        self.mark = f"{prefix}kicked:queued"
        self.wake = f"{prefix}kicked:wake"
        self.ttl = ttl
        # One command per kick: this runs after every producer's commit.
        self._add = client.register_script(_KICK_LUA)
        self._finish = client.register_script(_FINISH_LUA)

    def add(self, run_ids: Sequence[uuid.UUID]) -> bool:
        """Add ``run_ids``; return True if no drain holds the mark: the caller queues one."""
        keys = (self.members, self.mark, self.wake)
        ids = [str(run_id) for run_id in run_ids]
        # Lua's unpack() takes a few thousand values at most: a huge transaction goes in parts,
        # every part added whichever of them set the mark.
        queue = False
        for start in range(0, len(ids), _KICK_CHUNK):
            queue |= bool(self._add(keys=keys, args=[self.ttl, *ids[start : start + _KICK_CHUNK]]))
        return queue

    def take(self, count: int) -> list[uuid.UUID]:
        """Remove and return up to ``count`` kicked runs."""
        members: Any = self.client.spop(self.members, count)
        return [uuid.UUID(member.decode()) for member in members or ()]

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a kick; return True if one came."""
        return self.client.blpop([self.wake], timeout=timeout) is not None

    def finish(self) -> bool:
        """Clear the mark if no run is waiting, and return True; False: take more first."""
        return bool(self._finish(keys=(self.members, self.mark, self.wake)))

    def put_back(self, run_ids: Sequence[uuid.UUID]) -> None:
        """Return runs taken by a drain that failed, for the next drain of the set."""
        if run_ids:
            self.client.sadd(self.members, *(str(run_id) for run_id in run_ids))

    def hold(self, ttl: int) -> None:
        """Set the mark for ``ttl`` seconds: a drain is running, or its retry is on its way."""
        self.client.set(self.mark, 1, ex=ttl)

    def release(self) -> None:
        """Clear the mark: the drain could not be queued, or gave up; the next kick queues one."""
        self.client.delete(self.mark)
