"""The Redis Streams sink: one stream per run, one round trip per batch; reading streams back.

This module and ``tasks.redis_marks`` are the only ones that talk to the sink's Redis. They
decide here, in one place, what a Redis answer means (``classify``): an answer about the
run's own entries is a refusal, an answer about the server is an outage.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks import scripts
from tasks.errors import SinkUnavailable
from tasks.sink import Entry, PublishOutcome, StreamEntry, conflict_message

# Error codes (the first word of a Redis error) that speak about the server, not about a key:
# out of memory, a replica, loading its data, busy with a script, failing to persist, a
# cluster that cannot serve, credentials or permissions that do not fit the sink as configured.
OUTAGE_CODES = frozenset(
    {
        "OOM",
        "READONLY",
        "LOADING",
        "BUSY",
        "MISCONF",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "NOREPLICAS",
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
    }
)
_OUTAGE_TYPES = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.AuthenticationError,
    redis.exceptions.NoPermissionError,
)


def is_outage(error: Exception) -> bool:
    """True if ``error`` is about the Redis server as a whole rather than about one key."""
    if isinstance(error, _OUTAGE_TYPES):
        return True
    # redis-py keeps the code in the message for the codes it has no class for.
    code = str(error).split(" ", 1)[0]
    return code in OUTAGE_CODES


def unavailable(error: Exception) -> SinkUnavailable:
    """The SinkUnavailable that stands for ``error`` (chain it with ``from error``)."""
    return SinkUnavailable(f"Redis unavailable: {type(error).__name__}: {error}")


def stream_key(prefix: str, run_id: uuid.UUID) -> str:
    """Return the Redis key of the run's stream."""
    return f"{prefix}{run_id}"


def connect(url: str, *, timeout: float = 5.0, retries: int = 1) -> redis.Redis:
    """Return a Redis client for ``url`` with ``timeout`` on every call.

    ``retries``: how often a call is repeated after a connection error (one repeat covers a
    connection the server closed while idle; every call on our paths may be repeated).
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=30 if retries else 0,
    )


class RedisStreamSink:
    """Publishes each run's entries to its own stream, one pipelined round trip per batch."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script = scripts.register(client, "publish")

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        by_run: dict[uuid.UUID, list[str | int]] = {}
        for entry in entries:
            args = by_run.setdefault(entry.run_id, [])
            args.extend((entry.seq, entry.type, entry.payload, entry.id))
        if not by_run:
            return PublishOutcome()
        try:
            replies = self._run_scripts(by_run)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                # The server lost its script cache (a restart): load it again and re-send.
                # Re-sending is safe because adding an entry twice is a no-op.
                self._script.sha = str(self.client.script_load(self._script.script))
                replies = self._run_scripts(by_run)
        except redis.RedisError as exc:
            raise unavailable(exc) from exc
        outcome = PublishOutcome()
        for run_id, reply in zip(by_run, replies, strict=True):
            if not isinstance(reply, Exception):
                outcome.added[run_id], outcome.present[run_id] = (int(n) for n in reply)
            elif is_outage(reply):
                raise unavailable(reply) from reply  # the sink, not the run
            elif str(reply).startswith("CONFLICT "):
                _, seq, why = str(reply).split(" ", 2)
                outcome.conflicts[run_id] = conflict_message(run_id, int(seq), gone=why == "gone")
            else:
                outcome.refused[run_id] = str(reply)
        return outcome

    def _run_scripts(self, by_run: dict[uuid.UUID, list[str | int]]) -> list[Any]:
        # evalsha by hand: a pipeline of Script calls would ask SCRIPT EXISTS on every batch.
        pipe = self.client.pipeline(transaction=False)
        for run_id, args in by_run.items():
            pipe.evalsha(self._script.sha, 1, stream_key(self.prefix, run_id), *args)
        return list(pipe.execute(raise_on_error=False))


def _decode(entries: Iterable[Any]) -> list[StreamEntry]:
    decoded = []
    for entry_id, fields in entries:
        event = fields.get(b"event")
        decoded.append(
            StreamEntry(
                seq=int(entry_id.split(b"-", 1)[0]),
                type=fields.get(b"type", b"").decode(errors="replace"),
                payload=fields.get(b"payload", b"").decode(errors="replace"),
                event_id=int(event) if event is not None and event.isdigit() else None,
            )
        )
    return decoded


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
