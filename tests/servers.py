"""Private servers for fault tests: a ``redis-server`` of the test's own, on a free port.

A fault test stops, starts and reconfigures only what it started itself (by pid, from the
pidfile in its temporary directory), never the shared servers on the default ports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers import came_true, wait_until


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 and a free port, with its files in ``workdir``."""

    def __init__(self, workdir: Path, *args: str) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("the fault tests need redis-server on PATH")
        self.workdir = workdir
        self.port = free_port()
        self.args = args
        self.pidfile = workdir / f"redis-{self.port}.pid"
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (again, after ``stop``, on the same port and directory)."""
        subprocess.run(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.workdir),
                "--pidfile", str(self.pidfile),
                "--logfile", str(self.workdir / f"redis-{self.port}.log"),
                "--daemonize", "yes",
                "--save", "",
                "--appendonly", "no",
                *self.args,
            ],
            check=True,
            timeout=30,
        )  # fmt: skip
        wait_until(self._answers, 30, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(self.probe().ping())
        return False

    def client(self, **options: object) -> redis.Redis:
        """A client of this server."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)  # type: ignore[arg-type]

    def probe(self) -> redis.Redis:
        """A client that asks once: redis-py's default retries with back-off make a call to a
        server that is down take about 4 s to fail, which a poll for its state must not wait."""
        return self.client(retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)

    def pid(self) -> int | None:
        """The server's pid, if it runs."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        return None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until the port is free."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not came_true(lambda: self.pid() is None, 10):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self._answers() and self.pid() is None, 10, "redis to stop")
        self.pidfile.unlink(missing_ok=True)


@contextlib.contextmanager
def redis_server(workdir: Path, *args: str) -> Iterator[RedisServer]:
    """A private Redis for the duration of the block, always stopped afterwards."""
    server = RedisServer(workdir, *args)
    try:
        yield server.start()
    finally:
        server.stop()


class BlackHole:
    """A TCP endpoint on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                self.accepted.append(connection)  # held open, never read, never written

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@contextlib.contextmanager
def black_hole() -> Iterator[BlackHole]:
    """A black-holed endpoint for the duration of the block."""
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


class RedisCluster:
    """A Redis Cluster of ``masters`` ``redis-server`` nodes on 127.0.0.1, no replicas.

    Each node is a RedisServer on free ports (its data port and its cluster bus port) with its
    own directory under ``workdir``, so one can be stopped and started again by pid, keeping
    its node id and slots (``nodes.conf``) and, with ``--appendonly yes`` in ``args``, its
    data. Slots move with ``redis-cli --cluster reshard``, as an operator would move them.
    """

    def __init__(self, workdir: Path, masters: int = 3, *args: str) -> None:
        ports: set[int] = set()
        self.nodes: list[RedisServer] = []
        for index in range(masters):
            directory = workdir / f"node-{index}"
            directory.mkdir()
            bus = _fresh_port(ports)
            node = RedisServer(
                directory,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(bus),
                # A stopped master is failed after 2 s: a restart that takes longer makes the
                # whole cluster answer CLUSTERDOWN until the node is back.
                "--cluster-node-timeout", "2000",
                *args,
            )  # fmt: skip
            while node.port in ports:  # a data port must not be another node's bus port
                node = RedisServer(directory, *node.args)
            ports.add(node.port)
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """The URL of the first node: a client finds the others from it."""
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        """Start every node, join them into one cluster (the slots spread evenly), and wait
        until every node agrees on the slots."""
        for node in self.nodes:
            node.start()
        self._redis_cli("create", *(f"127.0.0.1:{node.port}" for node in self.nodes))
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait until every node says the cluster is ok and all agree on the slots."""
        wait_until(self._healthy, timeout, "the Redis Cluster to be ok on every node")

    def _healthy(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            states = [node.probe().execute_command("CLUSTER", "INFO") for node in self.nodes]
            if not all(b"cluster_state:ok" in state for state in states):
                return False
            check = subprocess.run(
                ["redis-cli", "--cluster", "check", f"127.0.0.1:{self.nodes[0].port}"],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return check.returncode == 0 and "All nodes agree" in check.stdout
        return False

    def node_id(self, node: RedisServer) -> str:
        """The cluster's id of ``node``."""
        return str(node.client().execute_command("CLUSTER", "MYID").decode())

    def node_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now (asked of the cluster, not cached)."""
        slot = redis.crc.key_slot(key.encode())
        for start, end, master, *_ in self.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                port = int(master[1])
                return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def slot_ranges(self, node: RedisServer) -> list[tuple[int, int]]:
        """The slots ``node`` serves now, as (first, last) ranges in ascending order."""
        reply = self.nodes[0].client().execute_command("CLUSTER", "SLOTS")
        return sorted((first, last) for first, last, master, *_ in reply
                      if int(master[1]) == node.port)  # fmt: skip

    def reshard(self, source: RedisServer, target: RedisServer, slots: int) -> None:
        """Move ``slots`` slots, with their keys, from ``source`` to ``target`` (the lowest
        slots of ``source`` first, as redis-cli picks them)."""
        self._redis_cli(
            "reshard", f"127.0.0.1:{self.nodes[0].port}",
            "--cluster-from", self.node_id(source),
            "--cluster-to", self.node_id(target),
            "--cluster-slots", str(slots),
            "--cluster-pipeline", "20",
        )  # fmt: skip
        self.wait_healthy()

    def _redis_cli(self, command: str, *args: str) -> None:
        done = subprocess.run(
            ["redis-cli", "--cluster", command, *args, "--cluster-yes"],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster {command} failed:\n{done.stdout}{done.stderr}")

    def stop(self, *nodes: RedisServer) -> None:
        """Stop ``nodes`` (by default every node) by pid, side by side: SIGTERM, then SIGKILL
        what is left after 10 s; wait until their ports refuse connections."""
        targets = nodes or tuple(self.nodes)
        for node in targets:
            pid = node.pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        came_true(lambda: all(node.pid() is None for node in targets), 10)
        for node in targets:
            pid = node.pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        # Not RedisServer.stop, which stops one server: the nodes stop side by side.
        wait_until(
            lambda: all(node.pid() is None and _refuses(node.port) for node in targets),
            10,
            "the cluster's nodes to stop",
        )
        for node in targets:
            node.pidfile.unlink(missing_ok=True)


def _refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _fresh_port(taken: set[int]) -> int:
    port = free_port()
    while port in taken:
        port = free_port()
    taken.add(port)
    return port


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3, *args: str) -> Iterator[RedisCluster]:
    """A private Redis Cluster for the duration of the block, always stopped afterwards."""
    cluster = RedisCluster(workdir, masters, *args)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 and a free port to ``upstream_port`` on 127.0.0.1, whose
    behaviour a fault test sets while it runs (``set_mode``):

    * ``pass``: bytes go through as they come;
    * ``delay``: each chunk waits ``delay`` seconds before it goes on (a slow link);
    * ``stall``: connections stay open, new ones are accepted, and nothing goes through in
      either direction (a black hole) until the mode changes;
    * ``drop``: every open connection is closed, and new ones are closed as soon as they are
      accepted.

    Threads, not asyncio: the test's own thread stays free to drive the scenario. Two pump
    threads per connection; everything is closed by ``close``.
    """

    MODES = ("pass", "delay", "stall", "drop")

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = int(self.listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.mode = "pass"
        self.delay = 0.0
        self.accepted = 0  # connections accepted so far, for the test to see they came
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        """Behave as ``mode`` from now on (``delay``: seconds per chunk, for ``delay``)."""
        assert mode in self.MODES, mode
        self.mode, self.delay = mode, delay
        if mode == "drop":
            self._close_pairs()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                client, _ = self.listener.accept()
                self.accepted += 1
                if self.mode == "drop":
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
                except OSError:
                    client.close()  # the upstream is down: so is the proxied service
                    continue
                with self._lock:
                    self._pairs.append((client, upstream))
                for source, target in ((client, upstream), (upstream, client)):
                    pump = threading.Thread(target=self._pump, args=(source, target), daemon=True)
                    pump.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        source.settimeout(0.1)  # to notice a change of mode while nothing comes
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                if self.mode == "stall":
                    self._closed.wait(0.05)  # read nothing: the peer's bytes wait in the socket
                    continue
                try:
                    chunk = source.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                if self.mode == "delay":
                    self._closed.wait(self.delay)
                while self.mode == "stall" and not self._closed.is_set():
                    self._closed.wait(0.05)  # a chunk read as the stall began waits with it
                target.sendall(chunk)
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def _close_pairs(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._close_pairs()


@contextlib.contextmanager
def tcp_proxy(upstream_port: int) -> Iterator[TcpProxy]:
    """A TCP proxy to ``upstream_port`` for the duration of the block, always closed."""
    proxy = TcpProxy(upstream_port)
    try:
        yield proxy
    finally:
        proxy.close()
