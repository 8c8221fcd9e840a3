"""The sink on a Redis Cluster: choosing the client, batches across nodes, the kicked set's
hash tag, what a cluster's errors mean, and exactly-once while slots move and a master
restarts.

Every cluster here is the test's own (``tests.servers.RedisCluster``): three masters on free
loopback ports, stopped by pid afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import RunOutbox
from models.errors import ConfigError
from tasks import drain_outbox_once
from tasks.drain import PassResult, Status
from tasks.errors import SinkUnavailable
from tasks.redis_marks import KickedSet, QueuedMarks
from tasks.redis_sink import (
    Client,
    LazyClient,
    RedisStreamSink,
    connect,
    is_outage,
    read_stream,
)
from tasks.settings import CelerySettings, Settings
from tests.fakes import Event
from tests.helpers import append, db_state, seed, stream_seqs, wait_until
from tests.servers import RedisCluster, redis_cluster, redis_server

services = pytest.mark.services

_ids = iter(range(1, 10**9))


def events(run_ids: list[uuid.UUID], seqs: range) -> list[Event]:
    """Entries of several runs, grouped by run and in seq order, as the drain passes them."""
    return [Event(r, next(_ids), seq, "step", f'{{"n": {seq}}}') for r in run_ids for seq in seqs]


def spread_runs(cluster: RedisCluster, prefix: str, per_node: int = 2) -> list[uuid.UUID]:
    """Run ids whose streams are served by each node of ``cluster``, ``per_node`` each."""
    runs: dict[int, list[uuid.UUID]] = {node.port: [] for node in cluster.nodes}
    while any(len(ids) < per_node for ids in runs.values()):
        run_id = uuid.uuid4()
        ids = runs[cluster.node_of(f"{prefix}{run_id}").port]
        if len(ids) < per_node:
            ids.append(run_id)
    return [run_id for ids in runs.values() for run_id in ids]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A cluster the tests of this module share; each uses keys under a prefix of its own."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture
def prefix() -> str:
    return f"cluster-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def connected() -> Iterator[Callable[..., Client]]:
    """``connect`` for this test: every client it makes is closed when the test ends."""
    made: list[Client] = []

    def connect_(url: str, **options: Any) -> Client:
        made.append(connect(url, **options))
        return made[-1]

    yield connect_
    for client in made:
        client.close()


@pytest.fixture
def cluster_client(cluster: RedisCluster, connected: Callable[..., Client]) -> Client:
    """The test's own client of the module's cluster, to look at what the sink wrote."""
    return connected(cluster.url, cluster=True)


# Choosing the client ---------------------------------------------------------------------


@services
def test_a_url_naming_any_cluster_node_gets_a_cluster_client_that_publishes_to_every_node(
    cluster: RedisCluster,
    cluster_client: Client,
    prefix: str,
    connected: Callable[..., Client],
) -> None:
    client = connected(cluster.nodes[1].url)  # the second node: any one will do
    sink = RedisStreamSink(client, prefix)
    runs = spread_runs(cluster, prefix)
    batch = events(runs, range(1, 4))

    outcome = sink.publish(batch)  # one publish: the batch fans out to the three nodes

    assert isinstance(client, LazyClient)
    assert isinstance(client.client, redis.RedisCluster)
    assert outcome.added == dict.fromkeys(runs, 3)
    assert {cluster.node_of(f"{prefix}{run_id}").port for run_id in runs} == {
        node.port for node in cluster.nodes
    }
    for run_id in runs:
        assert [e.seq for e in read_stream(cluster_client, prefix, run_id)] == [1, 2, 3]
    assert sink.publish(batch).present == dict.fromkeys(runs, 3)  # and again: nothing added


@services
def test_a_single_server_is_detected_as_one_and_forced_cluster_mode_on_it_is_an_outage(
    tmp_path: Path, connected: Callable[..., Client]
) -> None:
    run_id = uuid.uuid4()
    with redis_server(tmp_path) as server:
        detected = connected(server.url)
        assert RedisStreamSink(detected, "t:").publish(events([run_id], range(1, 2))).added == {
            run_id: 1
        }
        assert isinstance(detected, LazyClient)
        assert type(detected.client) is redis.Redis

        forced = RedisStreamSink(connected(server.url, cluster=True), "t:")
        with pytest.raises(SinkUnavailable, match="Cluster mode is not enabled"):
            forced.publish(events([run_id], range(2, 3)))


@services
def test_a_single_server_client_on_a_cluster_node_meets_an_outage_that_names_the_setting(
    cluster: RedisCluster, prefix: str, connected: Callable[..., Client]
) -> None:
    sink = RedisStreamSink(connected(cluster.url, cluster=False), prefix)
    runs = spread_runs(cluster, prefix, per_node=1)

    # Two of the three runs live on other nodes: they are answered MOVED, which is about the
    # configuration, not about the runs (never counted against them, never parking them).
    with pytest.raises(SinkUnavailable, match=r"MovedError.*OUTBOX_REDIS_CLUSTER"):
        sink.publish(events(runs, range(1, 2)))


@services
def test_a_server_that_refuses_info_is_taken_for_a_single_server_with_a_warning(
    tmp_path: Path, connected: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    run_id = uuid.uuid4()
    no_info = ("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-info")
    with redis_server(tmp_path, *no_info) as server:
        client = connected(server.url)
        with caplog.at_level(logging.WARNING, logger="tasks.redis_sink"):
            added = RedisStreamSink(client, "t:").publish(events([run_id], range(1, 2))).added

    assert added == {run_id: 1}
    assert isinstance(client, LazyClient)
    assert type(client.client) is redis.Redis
    assert "INFO cluster was refused" in caplog.text
    assert "set OUTBOX_REDIS_CLUSTER" in caplog.text


@services
def test_a_client_made_while_the_cluster_is_down_publishes_once_it_is_up(
    tmp_path: Path, prefix: str, connected: Callable[..., Client]
) -> None:
    cluster = RedisCluster(tmp_path)  # not started: nothing listens on its ports yet
    # What a worker builds when it starts: no I/O, so a cluster that is down does not stop it.
    detected = RedisStreamSink(connected(cluster.url, timeout=2), prefix)
    forced = RedisStreamSink(connected(cluster.url, cluster=True, timeout=2), prefix)
    run_id = uuid.uuid4()
    try:
        with pytest.raises(SinkUnavailable, match="ConnectionError"):
            detected.publish(events([run_id], range(1, 2)))
        with pytest.raises(SinkUnavailable, match="ClusterUnreachable"):
            forced.publish(events([run_id], range(1, 2)))

        cluster.start()

        assert detected.publish(events([run_id], range(1, 2))).added == {run_id: 1}
        assert forced.publish(events([run_id], range(2, 3))).added == {run_id: 1}
    finally:
        cluster.stop()


# Scripts and the kicked set ----------------------------------------------------------------


@services
def test_a_publish_after_its_runs_slot_moved_follows_the_cluster_to_the_new_node(
    cluster: RedisCluster, prefix: str, connected: Callable[..., Client]
) -> None:
    source, target = cluster.nodes[0], cluster.nodes[1]
    [(slot, _), *_] = cluster.slot_ranges(source)  # the slot redis-cli moves first
    run_id = next(r for r in iter(uuid.uuid4, None) if key_slot(f"{prefix}{r}".encode()) == slot)
    sink = RedisStreamSink(connected(cluster.url), prefix)
    sink.publish(events([run_id], range(1, 2)))  # the client learns the slot map

    cluster.reshard(source, target, 1)  # behind the client's back
    assert cluster.node_of(f"{prefix}{run_id}") == target

    # The pipeline sends the script where the client's map says, is answered MOVED, and
    # follows it.
    assert sink.publish(events([run_id], range(2, 3))).added == {run_id: 1}
    assert [e.seq for e in read_stream(sink.client, prefix, run_id)] == [1, 2]


@services
def test_the_sink_loads_its_script_again_on_every_node_that_lost_it(
    cluster: RedisCluster, prefix: str, connected: Callable[..., Client]
) -> None:
    sink = RedisStreamSink(connected(cluster.url), prefix)
    runs = spread_runs(cluster, prefix, per_node=1)
    sink.publish(events(runs, range(1, 2)))
    for node in cluster.nodes:
        node.client().script_flush()  # what a restart does to each node's script cache

    assert sink.publish(events(runs, range(2, 3))).added == dict.fromkeys(runs, 1)


@services
def test_runs_on_the_nodes_that_kept_the_script_count_as_added_when_one_node_lost_it(
    cluster: RedisCluster, prefix: str, connected: Callable[..., Client]
) -> None:
    sink = RedisStreamSink(connected(cluster.url), prefix)
    runs = spread_runs(cluster, prefix)
    sink.publish(events(runs, range(1, 2)))  # every node has the script now
    cluster.nodes[0].client().script_flush()  # one node restarted: only its runs are refused

    outcome = sink.publish(events(runs, range(2, 4)))

    assert (outcome.added, outcome.present) == (dict.fromkeys(runs, 2), dict.fromkeys(runs, 0))
    for run_id in runs:
        assert [e.seq for e in read_stream(sink.client, prefix, run_id)] == [1, 2, 3]


@pytest.mark.parametrize("queued_prefix", ["outbox:queued:", "app:{tenant-7}:", "a{", "x}{y"])
def test_the_kicked_sets_three_keys_hash_to_one_slot_whatever_the_prefix(
    queued_prefix: str,
) -> None:
    kicked = KickedSet(connect("redis://127.0.0.1:1/0", cluster=False), queued_prefix)

    slots = {key_slot(key.encode()) for key in (kicked.members, kicked.mark, kicked.wake)}

    assert len(slots) == 1


def test_a_queued_prefix_whose_first_hash_tag_is_empty_is_refused() -> None:
    # "{}" is no hash tag: each key would hash whole, and the kicked set's keys apart.
    with pytest.raises(ConfigError, match="OUTBOX_QUEUED_PREFIX must not start a Redis Cluster"):
        Settings.from_env({"OUTBOX_QUEUED_PREFIX": "outbox:{}:queued:"})


@services
def test_kicks_and_queued_marks_work_on_a_cluster(
    cluster: RedisCluster, prefix: str, connected: Callable[..., Client]
) -> None:
    client = connected(cluster.url)
    kicked, marks = KickedSet(client, prefix), QueuedMarks(client, prefix)
    runs = [uuid.uuid4() for _ in range(30)]  # marks on every node

    assert kicked.add(runs[:10], 30)  # the first kick sets the mark: queue a drain
    assert not kicked.add(runs[10:], 30)  # the next ones wake the drain instead
    assert kicked.wait(0.5)
    assert sorted(kicked.take(100)) == sorted(runs)
    assert kicked.finish()  # empty: the mark is cleared
    assert kicked.add(runs[:1], 30)  # so the next kick queues a drain again

    assert sorted(marks.claim(runs, 30)) == sorted(runs)
    assert marks.claim(runs, 30) == []
    marks.release(runs)  # one DEL of keys on every node
    assert sorted(marks.claim(runs, 30)) == sorted(runs)


# What a cluster's errors mean --------------------------------------------------------------


def test_a_cluster_that_cannot_serve_a_slot_is_an_outage_never_a_refusal() -> None:
    outages = [
        redis.exceptions.ClusterDownError("The cluster is down"),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
        redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        redis.exceptions.ClusterError("TTL exhausted."),
        redis.exceptions.MovedError("3999 127.0.0.1:7002"),
        redis.exceptions.AskError("3999 127.0.0.1:7002"),
        redis.exceptions.SlotNotCoveredError("Slot 3999 is not covered by the cluster."),
        redis.exceptions.RedisClusterException("Redis Cluster cannot be connected."),
    ]

    assert [error for error in outages if not is_outage(error)] == []


# The setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode"), [("", None), ("1", True), ("yes", True), ("0", False), ("off", False)]
)
def test_cluster_mode_is_asked_of_the_server_unless_the_setting_says(
    value: str, mode: bool | None
) -> None:
    assert Settings.from_env({"OUTBOX_REDIS_CLUSTER": value}).redis_cluster is mode


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OUTBOX_REDIS_CLUSTER": "cluster"},
            "OUTBOX_REDIS_CLUSTER must be 1/0, true/false, yes/no or on/off, got 'cluster'",
        ),
        (
            {"OUTBOX_REDIS_CLUSTER": "1", "OUTBOX_REDIS_URL": "redis://10.0.0.5:7000/2"},
            "OUTBOX_REDIS_CLUSTER is on, so OUTBOX_REDIS_URL must use database 0",
        ),
        (
            {"OUTBOX_REDIS_CLUSTER": "1", "OUTBOX_REDIS_URL": "unix:///run/redis.sock"},
            "OUTBOX_REDIS_CLUSTER is on, so OUTBOX_REDIS_URL must name a cluster node by host",
        ),
    ],
)
def test_a_cluster_setting_that_cannot_work_is_refused_at_start(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_a_cluster_sink_needs_a_broker_of_its_own() -> None:
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL must be set when OUTBOX_REDIS_CLUS"):
        CelerySettings.from_env({"OUTBOX_REDIS_CLUSTER": "1"})

    broker = "amqp://guest:guest@127.0.0.1:5672//"
    env = {"OUTBOX_REDIS_CLUSTER": "1", "CELERY_BROKER_URL": broker}
    assert CelerySettings.from_env(env).broker_url == broker


# Exactly once while the cluster changes ----------------------------------------------------


class Loops:
    """Threads that repeat a step until stopped; an exception in one is kept for the test."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def start(self, step: Callable[[], None]) -> None:
        def loop() -> None:
            try:
                while not self.stop.is_set():
                    step()
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.errors.append(exc)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads)
        assert self.errors == []


def test_every_event_reaches_its_stream_once_across_reshardings_and_a_master_restart(
    Session: sessionmaker[Session],
    settings: Settings,
    tmp_path: Path,
    connected: Callable[..., Client],
) -> None:
    # Data kept on disk: a master restarted without it would have lost its streams.
    durable = ("--appendonly", "yes", "--appendfsync", "always")
    with redis_cluster(tmp_path, 3, *durable) as cluster:
        on_cluster = dataclasses.replace(settings, redis_url=cluster.url)
        prefix = on_cluster.stream_prefix
        sink = RedisStreamSink(connected(cluster.url), prefix)
        runs = seed(Session, runs=24, events=0)
        passes: list[PassResult] = []

        def produce(mine: list[uuid.UUID]) -> Callable[[], None]:
            def step() -> None:
                for run_id in mine:
                    append(Session, run_id, 2)

            return step

        def drain() -> None:
            result = drain_outbox_once(session_factory=Session, publisher=sink, settings=on_cluster)
            passes.append(result)
            if not result.published:  # nothing to do, or an outage: let the others work
                loops.stop.wait(0.02)

        def passes_after(count: int, condition: Callable[[PassResult], bool]) -> bool:
            return any(condition(p) for p in passes[count:])

        loops = Loops()
        for start in range(3):
            loops.start(produce(runs[start::3]))
        for _ in range(2):
            loops.start(drain)
        try:
            wait_until(lambda: passes_after(0, lambda p: p.published > 0), 30, "a first drain")
            nodes_before = {r: cluster.node_of(f"{prefix}{r}").port for r in runs}

            # Slots move, with their streams, while producers append and drains publish.
            first, second, third = cluster.nodes
            before = len(passes)
            cluster.reshard(first, second, 3000)
            cluster.reshard(second, third, 4000)
            assert passes_after(before, lambda p: p.published > 0)  # drains ran meanwhile
            moved = [r for r in runs if cluster.node_of(f"{prefix}{r}").port != nodes_before[r]]
            assert moved, "the reshardings moved no run's stream"

            # A master stops. Every batch with one of its runs fails as an outage (the pipeline
            # cannot reach it); once the other masters have failed it, they answer CLUSTERDOWN
            # for every slot, an outage too. It starts again with its data and its slots.
            before = len(passes)
            cluster.stop(third)
            wait_until(lambda: passes_after(before, lambda p: p.outage), 30, "drains to fail")
            wait_until(
                lambda: b"cluster_state:fail" in first.client().execute_command("CLUSTER", "INFO"),
                30,
                "the cluster to fail the stopped master",
            )
            elsewhere = next(
                r for r in iter(uuid.uuid4, None) if cluster.node_of(f"{prefix}{r}") != third
            )
            probe = RedisStreamSink(connected(cluster.url), prefix)  # not racing the drains'
            with pytest.raises(SinkUnavailable, match="ClusterDownError"):
                probe.publish(events([elsewhere], range(1, 2)))
            third.start()
            cluster.wait_healthy()
            before = len(passes)
            wait_until(lambda: passes_after(before, lambda p: p.published > 0), 30, "drains again")
        finally:
            loops.join()

        def drained() -> bool:
            result = drain_outbox_once(session_factory=Session, publisher=sink, settings=on_cluster)
            return result.status is Status.DRAINED and not result.failed

        wait_until(drained, 60, "the last events to be drained")
        client = connected(cluster.url, cluster=True)
        for run_id in runs:
            next_seq, published, unpublished = db_state(Session, run_id)
            assert (published, unpublished) == (next_seq - 1, 0)
            assert stream_seqs(client, prefix, run_id) == list(range(1, next_seq))
        with Session() as session:
            rows = session.execute(select(RunOutbox.status, RunOutbox.attempts)).all()
        assert {tuple(row) for row in rows} == {("active", 0)}  # outages never counted
        print(
            f"{len(passes)} drain passes, {sum(1 for p in passes if p.outage)} met an outage, "
            f"{sum(p.published for p in passes)} entries added, "
            f"{sum(p.already_present for p in passes)} found present; {len(moved)} of "
            f"{len(runs)} streams moved"
        )
