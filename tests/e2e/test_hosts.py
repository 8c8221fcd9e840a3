"""Workers on several hosts: one database, one Redis Cluster, one broker, every event once.

Each "host" is what a machine of a deployment would have of its own: an environment built
from nothing (no variable of this process leaks into it), a working directory with its own
HOME and TMPDIR, a worker node name, and its own way to the cluster (each names a different
node in OUTBOX_REDIS_URL; one asks the server whether it is a cluster, one is told). The
broker is the suite's Redis (a Redis Cluster cannot be Celery's broker), in a queue of the
test's own. Every process is stopped by pid when the test ends, pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from tasks.redis_sink import connect
from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.processes import CeleryProcess
from tests.helpers import db_state, seed, stream_seqs, wait_until
from tests.servers import RedisCluster, redis_cluster

ROUNDS = 40  # each producer round appends 1, 2 or 3 events to every run, one commit per run

# A producer host's program: append to the runs in argv, kicking a drain on each commit.
PRODUCER = """
import sys, uuid
from tasks import app  # noqa: F401 - registers the kicker that OUTBOX_KICK_ON_COMMIT uses
from models import append_event
from models.db import session_factory

Session = session_factory()
runs = [uuid.UUID(arg) for arg in sys.argv[2:]]
for round_ in range(int(sys.argv[1])):
    for run_id in runs:
        with Session() as session, session.begin():
            for n in range(1 + round_ % 3):
                append_event(session, run_id, "step", {"round": round_, "n": n})
"""


def events_per_run(rounds: int) -> int:
    return sum(1 + round_ % 3 for round_ in range(rounds))


class Hosts:
    """The test's hosts: a directory and an environment each; their processes, always stopped."""

    def __init__(self, root: Path, shared: dict[str, str]) -> None:
        self.root = root
        self.shared = shared  # what every host of the deployment is configured with alike
        self.processes: list[CeleryProcess] = []

    def env(self, host: str, **own: str) -> dict[str, str]:
        """``host``'s environment: PATH, its own HOME and TMPDIR, the shared settings, ``own``."""
        home = self.root / host
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        base = {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(home / "tmp")}
        return base | {"LANG": "C.UTF-8"} | self.shared | own

    def start(self, host: str, name: str, args: list[str], ready: str, **own: str) -> CeleryProcess:
        """Start ``celery -A tasks ARGS`` on ``host`` (in its directory, with its environment)."""
        env = self.env(host, **own)
        log = self.root / host / f"{name}.log"
        process = CeleryProcess(name, args, env=env, log=log, cwd=self.root / host)
        self.processes.append(process)  # before waiting: stop() covers one that never got ready
        process.wait_ready(ready, timeout=90)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.alive():
                process.terminate()
        for process in self.processes:
            process.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    (tmp_path / "cluster").mkdir()
    with redis_cluster(tmp_path / "cluster") as started:
        yield started


@pytest.fixture
def hosts(
    tmp_path: Path, settings: Settings, key_space: str, redis_client: redis.Redis
) -> Iterator[Hosts]:
    queue = f"{key_space}queue"
    shared = {
        "OUTBOX_DATABASE_URL": settings.database_url.render_as_string(hide_password=False),
        "OUTBOX_STREAM_PREFIX": settings.stream_prefix,
        "OUTBOX_QUEUED_PREFIX": settings.queued_prefix,
        "CELERY_BROKER_URL": settings.redis_url,  # the suite's Redis, a queue of our own
        "OUTBOX_QUEUE": queue,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        # A drain lost with a host is queued again soon: its mark expires after 2 s.
        "OUTBOX_QUEUED_TTL": "2",
    }
    deployment = Hosts(tmp_path / "hosts", shared)
    try:
        yield deployment
    finally:
        deployment.stop()
        # The queue's list is under the key space (deleted by redis_client); its bindings:
        redis_client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def start_worker(hosts: Hosts, host: str, **own: str) -> CeleryProcess:
    queue = hosts.shared["OUTBOX_QUEUE"]
    args = processes.worker_args(queue, f"worker@{host}", concurrency=2)
    return hosts.start(host, "worker", args, f"worker@{host} ready.", **own)


def drained_tasks(worker: CeleryProcess) -> int:
    """How many drain tasks ``worker`` finished (drain_run, drain_runs, drain_kicked)."""
    return len(re.findall(r"Task outbox\.drain_\w+\[[^]]+\] succeeded", worker.read_log()))


def test_workers_on_two_hosts_publish_every_event_once_to_one_cluster_though_one_is_killed(
    Session: sessionmaker[Session], settings: Settings, cluster: RedisCluster, hosts: Hosts
) -> None:
    first, second, third = (node.url for node in cluster.nodes)
    runs = seed(Session, runs=12, events=0)
    # host-a asks the server whether it is a cluster; host-b is told; both drain; host-b
    # also runs the deployment's one beat.
    doomed = start_worker(hosts, "host-a", OUTBOX_REDIS_URL=first)
    survivor = start_worker(hosts, "host-b", OUTBOX_REDIS_URL=second, OUTBOX_REDIS_CLUSTER="1")
    beat_args = processes.beat_args(hosts.root / "host-b" / "beat-schedule")
    hosts.start(
        "host-b",
        "beat",
        beat_args,
        processes.BEAT_READY,
        OUTBOX_REDIS_URL=second,
        OUTBOX_REDIS_CLUSTER="1",
        OUTBOX_DISPATCH_INTERVAL="0.2",
    )

    # host-c produces, kicking a drain after every commit (through the kicked set, whose
    # three keys share one slot of the cluster).
    producer_env = hosts.env(
        "host-c", OUTBOX_REDIS_URL=third, OUTBOX_KICK_ON_COMMIT="1", OUTBOX_KICK_TIMEOUT="5"
    )
    command = [sys.executable, "-c", PRODUCER, str(ROUNDS), *map(str, runs)]
    with subprocess.Popen(
        command, cwd=hosts.root / "host-c", env=producer_env, stderr=subprocess.PIPE, text=True
    ) as producer:
        try:
            # host-a dies (SIGKILL to its whole process group: the machine is gone) once it
            # has drained, while events keep coming; what it held is drained by host-b.
            wait_until(lambda: drained_tasks(doomed) > 0, 60, "host-a to drain")
            os.killpg(doomed.pid, signal.SIGKILL)
            _, errors = producer.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                producer.kill()
    assert producer.returncode == 0, errors
    assert "could not kick" not in errors  # every kick reached the cluster and the broker

    n = events_per_run(ROUNDS)
    for run_id in runs:
        wait_until(lambda r=run_id: db_state(Session, r) == (n + 1, n, 0), 60, f"run {run_id}")
    client = connect(first)
    try:
        for run_id in runs:
            assert stream_seqs(client, settings.stream_prefix, run_id) == list(range(1, n + 1))
    finally:
        client.close()
    assert drained_tasks(survivor) > 0
    assert "Traceback" not in survivor.read_log()
    assert "outbox.drain_kicked" in doomed.read_log() + survivor.read_log()
