"""What every sink must do (the rules in ``tasks.sink``), run against each sink we ship.

The Redis sink runs against a private ``redis-server`` the suite starts, so that the outage
cases can set its memory limit without touching a shared server, and against a private
three-master Redis Cluster (the same sink, with a cluster client).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis

from tasks import redis_sink
from tasks.errors import SinkUnavailable
from tasks.sink import InMemorySink, Sink, StreamEntry
from tests.fakes import Event
from tests.helpers import unreachable_redis
from tests.servers import RedisCluster, RedisServer, redis_cluster, redis_server


class Kit(Protocol):
    """A sink plus the means to look inside it and to break it."""

    sink: Sink

    def read(self, run_id: uuid.UUID) -> list[StreamEntry]: ...
    def put(self, run_id: uuid.UUID, entry: StreamEntry) -> None: ...
    def remove(self, run_id: uuid.UUID, seq: int) -> None: ...
    def refuse(self, run_id: uuid.UUID) -> None: ...
    def out_of_memory(self) -> contextlib.AbstractContextManager[None]: ...
    def unreachable(self) -> Sink: ...


class MemoryKit:
    def __init__(self) -> None:
        self.sink = InMemorySink()

    def read(self, run_id: uuid.UUID) -> list[StreamEntry]:
        return self.sink.entries(run_id)

    def put(self, run_id: uuid.UUID, entry: StreamEntry) -> None:
        self.sink.put(run_id, entry)

    def remove(self, run_id: uuid.UUID, seq: int) -> None:
        self.sink.remove(run_id, seq)

    def refuse(self, run_id: uuid.UUID) -> None:
        self.sink.refuse(run_id, "WRONGTYPE Operation against a key holding the wrong kind")

    @contextlib.contextmanager
    def out_of_memory(self) -> Iterator[None]:
        self.sink.unavailable = "OOM command not allowed when used memory > 'maxmemory'."
        yield
        self.sink.unavailable = None

    def unreachable(self) -> Sink:
        broken = InMemorySink()
        broken.unavailable = "Redis unavailable: ConnectionError"
        return broken


class RedisKit:
    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.prefix = f"contract:{uuid.uuid4().hex[:8]}:"
        self.sink = redis_sink.RedisStreamSink(self.client, self.prefix)

    def key(self, run_id: uuid.UUID) -> str:
        return redis_sink.stream_key(self.prefix, run_id)

    def read(self, run_id: uuid.UUID) -> list[StreamEntry]:
        return redis_sink.read_stream(self.client, self.prefix, run_id)

    def put(self, run_id: uuid.UUID, entry: StreamEntry) -> None:
        fields = {"type": entry.type, "payload": entry.payload}
        if entry.event_id is not None:
            fields["event"] = str(entry.event_id)
        self.client.xadd(self.key(run_id), fields, id=f"{entry.seq}-0")  # type: ignore[arg-type]

    def remove(self, run_id: uuid.UUID, seq: int) -> None:
        self.client.xdel(self.key(run_id), f"{seq}-0")

    def refuse(self, run_id: uuid.UUID) -> None:
        self.client.set(self.key(run_id), "not a stream")

    @contextlib.contextmanager
    def out_of_memory(self) -> Iterator[None]:
        self.client.config_set("maxmemory-policy", "noeviction")
        self.client.config_set("maxmemory", "1")  # whatever it holds is over the limit
        try:
            yield
        finally:
            self.client.config_set("maxmemory", "0")

    def unreachable(self) -> Sink:
        return redis_sink.RedisStreamSink(unreachable_redis(), self.prefix)


class ClusterKit(RedisKit):
    """The Redis sink on a cluster: the runs of one publish are spread over three masters."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.nodes = cluster.nodes
        self.client = redis_sink.connect(cluster.url, cluster=True)
        self.prefix = f"contract:{uuid.uuid4().hex[:8]}:"
        self.sink = redis_sink.RedisStreamSink(redis_sink.connect(cluster.url), self.prefix)

    @contextlib.contextmanager
    def out_of_memory(self) -> Iterator[None]:
        clients = [node.client() for node in self.nodes]  # every master is over its limit
        for client in clients:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
        try:
            yield
        finally:
            for client in clients:
                client.config_set("maxmemory", "0")

    def unreachable(self) -> Sink:
        client = redis_sink.connect("redis://127.0.0.1:1/0", cluster=True, retries=0)
        return redis_sink.RedisStreamSink(client, self.prefix)

    def close(self) -> None:
        self.client.close()
        self.sink.client.close()


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path_factory.mktemp("contract-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("contract-redis")) as server:
        yield server


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.services),
        pytest.param("cluster", marks=pytest.mark.services),
    ]
)
def kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    if request.param == "memory":
        yield MemoryKit()
    elif request.param == "cluster":
        cluster_kit = ClusterKit(request.getfixturevalue("private_cluster"))
        yield cluster_kit
        cluster_kit.close()  # RedisCluster clients hold sockets the GC would warn about
    else:
        server: RedisServer = request.getfixturevalue("private_redis")
        yield RedisKit(server)


_ids = iter(range(1, 10**9))


def events(run_id: uuid.UUID, seqs: range | list[int], kind: str = "step") -> list[Event]:
    """Events of one run with ascending ids, as the outbox tables give them."""
    return [Event(run_id, next(_ids), seq, kind, f'{{"n": {seq}}}') for seq in seqs]


def as_entries(batch: list[Event]) -> list[StreamEntry]:
    return [StreamEntry(e.seq, e.type, e.payload, e.id) for e in batch]


def test_a_publish_adds_each_entry_once_in_seq_order_with_its_seq_as_id(kit: Kit) -> None:
    run_id = uuid.uuid4()
    batch = events(run_id, range(1, 4))

    outcome = kit.sink.publish(batch)

    assert (outcome.added, outcome.present) == ({run_id: 3}, {run_id: 0})
    assert kit.read(run_id) == as_entries(batch)


def test_publishing_again_adds_nothing_and_reports_what_was_present(kit: Kit) -> None:
    run_id = uuid.uuid4()
    batch = events(run_id, range(1, 6))
    kit.sink.publish(batch[:3])  # a drain published these, then died before its commit

    outcome = kit.sink.publish(batch)

    assert (outcome.added, outcome.present) == ({run_id: 2}, {run_id: 3})
    assert kit.read(run_id) == as_entries(batch)


def test_runs_are_independent_within_one_publish(kit: Kit) -> None:
    refused, fine = uuid.uuid4(), uuid.uuid4()
    kit.refuse(refused)

    outcome = kit.sink.publish([*events(refused, [1, 2]), *events(fine, [1, 2])])

    assert list(outcome.refused) == [refused]
    assert outcome.refused[refused].startswith("WRONGTYPE")
    assert (outcome.added, outcome.conflicts) == ({fine: 2}, {})
    assert [e.seq for e in kit.read(fine)] == [1, 2]


def test_an_id_held_by_another_event_is_a_conflict_that_stops_the_run_there(kit: Kit) -> None:
    run_id = uuid.uuid4()
    batch = events(run_id, [1, 2, 3])
    kit.sink.publish(batch[:1])
    foreign = StreamEntry(2, "old", '{"old": true}', event_id=1)  # an earlier run's entry 2
    kit.put(run_id, foreign)

    outcome = kit.sink.publish(batch)

    assert list(outcome.conflicts) == [run_id]
    assert "CONFLICT entry 2-0 holds another event" in outcome.conflicts[run_id]
    assert (outcome.added, outcome.present) == ({}, {})
    assert kit.read(run_id) == [*as_entries(batch[:1]), foreign]  # 3 never added


def test_an_entry_written_without_an_event_id_is_present_when_its_content_matches(
    kit: Kit,
) -> None:
    run_id = uuid.uuid4()
    [event] = events(run_id, [1])
    kit.put(run_id, StreamEntry(1, event.type, event.payload))  # by an earlier version

    outcome = kit.sink.publish([event])

    assert (outcome.added, outcome.present, outcome.conflicts) == ({run_id: 0}, {run_id: 1}, {})


def test_an_entry_a_consumer_trimmed_is_present_only_if_a_later_entry_is_this_runs(
    kit: Kit,
) -> None:
    trimmed, reused = uuid.uuid4(), uuid.uuid4()
    ours = events(trimmed, [1, 2])
    kit.sink.publish(ours)
    kit.remove(trimmed, 1)
    old = events(reused, [1, 2], kind="old")  # an earlier run with this id, trimmed too
    kit.sink.publish(old)
    kit.remove(reused, 1)

    outcome = kit.sink.publish([*ours, *events(reused, [1, 2, 3])])

    assert (outcome.added, outcome.present) == ({trimmed: 0}, {trimmed: 2})
    assert list(outcome.conflicts) == [reused]
    assert "CONFLICT entry 1-0 is gone" in outcome.conflicts[reused]


def test_a_sink_out_of_memory_is_an_outage_not_a_refusal(kit: Kit) -> None:
    run_id = uuid.uuid4()
    kit.sink.publish(events(run_id, [1]))  # memory in use, so the limit below is exceeded

    with kit.out_of_memory(), pytest.raises(SinkUnavailable, match="maxmemory"):
        kit.sink.publish(events(run_id, [2, 3]))

    assert [e.seq for e in kit.read(run_id)] == [1]
    assert kit.sink.publish(events(run_id, [2])).added == {run_id: 1}


def test_an_unreachable_sink_is_an_outage(kit: Kit) -> None:
    with pytest.raises(SinkUnavailable):
        kit.unreachable().publish(events(uuid.uuid4(), [1]))


@pytest.mark.services
def test_the_redis_sink_calls_a_read_only_replica_an_outage(tmp_path: Path) -> None:
    # A replica of a master that is not there: every write is answered READONLY.
    with redis_server(tmp_path, "--replicaof", "127.0.0.1", "1") as replica:
        sink = redis_sink.RedisStreamSink(replica.client(), "contract:")
        with pytest.raises(SinkUnavailable, match="ReadOnlyError"):
            sink.publish(events(uuid.uuid4(), [1]))


@pytest.mark.services
def test_the_redis_sink_reloads_its_script_after_the_server_lost_it(
    private_redis: RedisServer,
) -> None:
    kit = RedisKit(private_redis)
    run_id = uuid.uuid4()
    kit.sink.publish(events(run_id, [1]))
    kit.client.script_flush()  # what a restart does to the script cache (our own server)

    assert kit.sink.publish(events(run_id, [2])).added == {run_id: 1}


def test_redis_answers_about_the_server_are_outages_and_about_a_key_refusals() -> None:
    outage = [
        redis.ConnectionError("refused"),
        redis.TimeoutError("timed out"),
        redis.exceptions.OutOfMemoryError("command not allowed"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.ResponseError("BUSY Redis is busy running a script."),
        redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."),
        redis.ResponseError("CLUSTERDOWN The cluster is down"),
        redis.ResponseError("NOPERM this user has no permissions"),
    ]
    refusal = [
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
        redis.ResponseError("ERR some answer about this key"),
    ]
    assert all(redis_sink.is_outage(error) for error in outage)
    assert not any(redis_sink.is_outage(error) for error in refusal)
