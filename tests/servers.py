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
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.helpers import wait_until


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
            return bool(self.client().ping())
        return False

    def client(self, **options: object) -> redis.Redis:
        """A client of this server."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)  # type: ignore[arg-type]

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
        deadline = time.monotonic() + 10
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pid() is not None:
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
