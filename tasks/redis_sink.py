"""The Redis Streams sink: one stream per run, one round trip per batch; reading streams back.

This module and ``tasks.redis_marks`` are the only ones that talk to the sink's Redis. They
decide here, in one place, what a Redis answer means (``classify``): an answer about the
run's own entries is a refusal, an answer about the server is an outage.

The sink is a single Redis server or a Redis Cluster (``connect``). Every key a command or a
script touches is one key or keys that share a hash slot, so the code is the same for both:
a cluster client routes each command, and each command of a pipeline, to its slot's node.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry

from tasks import scripts
from tasks.errors import SinkUnavailable, StreamUnreadable, missing_database
from tasks.sink import (
    Entry,
    PublishOutcome,
    StreamEntry,
    StreamInfo,
    StreamItem,
    conflict_message,
)

logger = logging.getLogger(__name__)

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


class ClusterUnreachable(redis.ConnectionError):
    """No node of the cluster answered, or the server is no cluster node, when the cluster
    client was made (redis-py raises RedisClusterException, which is not a RedisError)."""


# What a call on the sink's Redis may raise: redis-py's cluster client raises
# RedisClusterException (no RedisError) when no node answers or a slot has no node.
ERRORS = (redis.RedisError, RedisClusterException)

_OUTAGE_TYPES = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.AuthenticationError,
    redis.exceptions.NoPermissionError,
    # A cluster that cannot serve a slot now: down (CLUSTERDOWN, MASTERDOWN), a multi-key
    # command split by a resharding (TRYAGAIN), redirections past the client's limit
    # ("TTL exhausted"), a slot that no node serves, no node reachable. redis-py takes the
    # code off the message of these, so they are told by their class.
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    RedisClusterException,
    # MOVED or ASK reaching us: a single server's client talking to a cluster node (the
    # cluster client follows them itself).
    redis.exceptions.AskError,
)


# What a server answers to the SELECT of a database it does not have (redis-py sends it on
# every new connection): about the configuration, so about the sink as a whole.
MISSING_DATABASE = "DB index is out of range"


def is_outage(error: Exception) -> bool:
    """True if ``error`` is about the Redis server as a whole rather than about one key."""
    if isinstance(error, _OUTAGE_TYPES) or MISSING_DATABASE in str(error):
        return True
    # redis-py keeps the code in the message for the codes it has no class for.
    code = str(error).split(" ", 1)[0]
    return code in OUTAGE_CODES


def unavailable(error: Exception) -> SinkUnavailable:
    """The SinkUnavailable that stands for ``error`` (chain it with ``from error``)."""
    hint = ""
    if MISSING_DATABASE in str(error):
        hint = " (the database number of OUTBOX_REDIS_URL does not exist on this server)"
    elif isinstance(error, redis.exceptions.AskError):
        hint = " (a Redis Cluster node: leave OUTBOX_REDIS_CLUSTER unset, or set it to 1)"
    return SinkUnavailable(f"Redis unavailable: {type(error).__name__}: {error}{hint}")


def stream_key(prefix: str, run_id: uuid.UUID) -> str:
    """Return the Redis key of the run's stream."""
    return f"{prefix}{run_id}"


def connect(
    url: str, *, cluster: bool | None = None, timeout: float = 5.0, retries: int = 1
) -> Client:
    """Return a client of the sink's Redis at ``url``, with ``timeout`` on every call.

    ``cluster``: True for a Redis Cluster (``url`` names any of its nodes), False for a
    single server, None to ask the server (``INFO cluster``). Both True and None connect on
    the first call, not here (``LazyClient``). ``retries``: how often a call is repeated
    after a connection error (one repeat covers a connection the server closed while idle;
    every call on our paths may be repeated); a cluster client also reads the slot map again
    before it repeats one.
    """
    single = _single_server(url, timeout, retries)
    if cluster is False:
        return single
    return LazyClient(single, url, cluster=cluster, timeout=timeout, retries=retries)


def _single_server(url: str, timeout: float, retries: int) -> redis.Redis:
    # No I/O: redis-py connects on the first command. A URL it cannot read is a ValueError.
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=30 if retries else 0,
    )


def is_cluster_node(client: redis.Redis) -> bool:
    """Ask the server behind ``client`` whether it is a Redis Cluster node (``INFO cluster``)."""
    try:
        info: Any = client.info("cluster")
    except redis.ResponseError as exc:  # INFO refused (an ACL) or renamed away
        if MISSING_DATABASE in str(exc):  # not about INFO: the URL names no database here
            database = int(client.connection_pool.connection_kwargs.get("db", 0))
            raise missing_database(database, _database_count(client)) from exc
        # A single server, as before there was a choice: a cluster node would answer MOVED
        # for the keys of other nodes, an outage whose message names OUTBOX_REDIS_CLUSTER.
        logger.warning(
            "INFO cluster was refused (%s): using OUTBOX_REDIS_URL as a single Redis server; "
            "set OUTBOX_REDIS_CLUSTER to 1 (a cluster) or 0 (one server) to say which",
            exc,
        )
        return False
    return bool(info.get("cluster_enabled"))


def _database_count(client: redis.Redis) -> int | None:
    """How many databases the server behind ``client`` has (None: it will not say)."""
    pool = client.connection_pool
    connection = pool.connection_class(**{**pool.connection_kwargs, "db": 0})
    try:
        connection.send_command("CONFIG", "GET", "databases")
        reply: Any = connection.read_response()
        # A flat [name, value] list, or a {name: value} map where the protocol has maps.
        value = next(iter(reply.values())) if isinstance(reply, dict) else reply[1]
        return int(value)
    except (redis.RedisError, IndexError, StopIteration, ValueError, TypeError):
        return None
    finally:
        connection.disconnect()


class LazyClient:
    """A client of the sink's Redis that connects on its first call, as a cluster's client or
    a single server's.

    Both need the server: a cluster client reads the slot map when it is made, and telling a
    cluster node from a single server takes ``INFO cluster``. Deferring that to the first call
    keeps building the runtime free of I/O, as it is with a single server: a worker that
    starts while Redis is down meets the outage in its drains, where outages are handled, and
    a producer's kick pays for it once, under the kick's timeout and pause. A first call that
    fails is tried again by the next one. Every attribute is the real client's.
    """

    def __init__(
        self, single: redis.Redis, url: str, *, cluster: bool | None, timeout: float, retries: int
    ) -> None:
        self._single = single  # the client if the server turns out to be a single server
        self._url = url
        self._cluster = cluster
        self._timeout = timeout
        self._retries = retries
        self._client: redis.Redis | redis.RedisCluster | None = None
        # Held only to publish the client made, never across I/O: a child forked meanwhile
        # cannot inherit it held for long.
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis | redis.RedisCluster:
        """The real client, made on first use."""
        client = self._client
        if client is not None:
            return client
        made = self._connect()
        with self._lock:  # threads that made one each at once keep the first
            if self._client is None:
                self._client = made
            client = self._client
        if made is not client and made is not self._single:
            made.close()
        return client

    def _connect(self) -> redis.Redis | redis.RedisCluster:
        if self._cluster is None and not is_cluster_node(self._single):
            return self._single
        try:
            return redis.RedisCluster.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), self._retries),
            )
        except RedisClusterException as exc:
            raise ClusterUnreachable(str(exc)) from exc

    def register_script(self, script: str) -> Script:
        """The script bound to this client, without connecting: its sha is its bytes' hash."""
        return Script(self, script.encode())  # type: ignore[arg-type]  # it calls our evalsha

    def close(self) -> None:
        """Close the connections of the real client, and of the one that asked the server."""
        if isinstance(self._client, redis.RedisCluster):
            # RedisCluster.close() leaves its nodes' pooled connections open (redis-py 8.1).
            cluster: Any = self._client  # redis-py leaves the method untyped
            cluster.disconnect_connection_pools()
            self._client.close()
        self._single.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # ours, before __init__ set it (copy, pickle): not the client's
            raise AttributeError(name)
        return getattr(self.client, name)


# The sink's client: a single server's, a cluster's, or one that is either from its first call.
Client: TypeAlias = "redis.Redis | redis.RedisCluster | LazyClient"


class RedisStreamSink:
    """Publishes each run's entries to its own stream, one pipelined round trip per batch."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(scripts.source("publish"))

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        by_run: dict[uuid.UUID, list[str | int]] = {}
        for entry in entries:
            args = by_run.setdefault(entry.run_id, [])
            args.extend((entry.seq, entry.type, entry.payload, entry.id))
        if not by_run:
            return PublishOutcome()
        try:
            replies = dict(zip(by_run, self._run_scripts(by_run), strict=True))
            lost = {
                r: by_run[r] for r, reply in replies.items() if isinstance(reply, NoScriptError)
            }
            if lost:
                # The server lost its script cache (a restart): load it again and re-send the
                # runs it refused. Only those: on a cluster the other nodes' runs were added
                # already, and sent again they would count as present, not added.
                # A cluster client loads it on every primary (one node restarted, or a node
                # new to the cluster that a resharding gave the run's slot).
                self._script.sha = str(self.client.script_load(self._script.script))
                replies.update(zip(lost, self._run_scripts(lost), strict=True))
        except ERRORS as exc:
            raise unavailable(exc) from exc
        outcome = PublishOutcome()
        for run_id, reply in replies.items():
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
        # EVALSHA by hand: a pipeline of Script calls would ask SCRIPT EXISTS on every batch,
        # and a cluster pipeline refuses its evalsha() method, though it takes the command.
        # A cluster pipeline sends each node its runs' scripts in one round trip, all nodes
        # at once, and follows MOVED and ASK (a resharding) command by command.
        client = self.client.client if isinstance(self.client, LazyClient) else self.client
        # Each run's node from the client's slot map: left to find it, redis-py 8.1's cluster
        # pipeline asks the server for an EVALSHA's keys, one round trip per command (COMMAND
        # GETKEYS). A slot that moved since is answered MOVED or ASK, and followed.
        node_of = None
        if isinstance(client, redis.RedisCluster):
            cluster: Any = client  # redis-py leaves get_node_from_key untyped
            node_of = cluster.get_node_from_key
        pipe = client.pipeline(transaction=False)
        for run_id, args in by_run.items():
            key = stream_key(self.prefix, run_id)
            options = {} if node_of is None else {"target_nodes": node_of(key)}
            pipe.execute_command("EVALSHA", self._script.sha, 1, key, *args, **options)
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
    client: Client, prefix: str, run_id: uuid.UUID, *, after: int = 0, count: int = 1000
) -> list[StreamEntry]:
    """Return up to ``count`` entries of the run's stream with seq above ``after``."""
    entries: Any = client.xrange(stream_key(prefix, run_id), min=f"({after}-0", count=count)
    return _decode(entries)


def wait_stream(
    client: Client, prefix: str, run_id: uuid.UUID, *, after: int, block_ms: int
) -> list[StreamEntry]:
    """Block up to ``block_ms`` for entries with seq above ``after``."""
    key = stream_key(prefix, run_id)
    reply: Any = client.xread({key: f"{after}-0"}, block=block_ms, count=1000)
    return _decode(reply[0][1]) if reply else []


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _id_parts(entry_id: Any) -> tuple[int, int]:
    first, _, second = _text(entry_id).partition("-")
    return int(first), int(second or 0)


def _field(fields: Any, name: str) -> str | None:
    value = fields.get(name.encode(), fields.get(name))
    return None if value is None else _text(value)


class RedisStreamReader:
    """Reads runs' streams back for `outbox verify` and `outbox replay`
    (``tasks.sink.StreamReader``)."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def info(self, run_id: uuid.UUID) -> StreamInfo:
        key = stream_key(self.prefix, run_id)
        try:
            reply: Any = self.client.xinfo_stream(key)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return StreamInfo()
            raise self._failure(key, exc) from exc
        except ERRORS as exc:
            raise unavailable(exc) from exc
        first, added = reply.get("first-entry"), reply.get("entries-added")
        return StreamInfo(
            length=int(reply["length"]),
            last_seq=_id_parts(reply["last-generated-id"])[0],
            entries_added=None if added is None else int(added),  # Redis 7 and later only
            first_seq=_id_parts(first[0])[0] if first else None,
        )

    def read(
        self, run_id: uuid.UUID, after: tuple[int, int] | None, last: int | None, count: int
    ) -> list[StreamItem]:
        key = stream_key(self.prefix, run_id)
        low = "-" if after is None else f"({after[0]}-{after[1]}"
        try:
            entries: Any = self.client.xrange(
                key, min=low, max="+" if last is None else str(last), count=count
            )
        except redis.ResponseError as exc:
            raise self._failure(key, exc) from exc
        except ERRORS as exc:
            raise unavailable(exc) from exc
        items = []
        for entry_id, fields in entries:
            seq, sub = _id_parts(entry_id)
            type_, payload = _field(fields, "type"), _field(fields, "payload")
            items.append(StreamItem(seq, sub, type_, payload, _field(fields, "event")))
        return items

    @staticmethod
    def _failure(key: str, error: redis.ResponseError) -> Exception:
        if is_outage(error):
            return unavailable(error)
        return StreamUnreadable(f"{key} cannot be read as a stream: {error}")
