"""The plugin's guard against real processes: a worker left running on the test's database, or
an ``outbox drain`` in a terminal, fails the next step-wise drain, naming it; the test's own
worker (``outbox_worker``) does not.

These tests use the plugin's fixtures (``tasks.testing.plugin``), as an application would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import append_event, create_run
from models.db import host_label, libpq_url
from tasks.settings import Settings
from tasks.testing.drainer import Drainer
from tasks.testing.guard import Guard
from tasks.testing.sinks import Streams
from tasks.testing.workers import Workers, environment
from tests.helpers import wait_until


def seed_run(Session: sessionmaker[Session], events: int = 2) -> uuid.UUID:
    with Session() as session, session.begin():
        run = create_run(session)
        for n in range(events):
            append_event(session, run.id, "seeded", {"n": n})
    return run.id


def sessions_of(guard: Guard, role: str) -> list[int]:
    """The pids of the processes of ``role`` connected to the guard's database."""
    return [session.pid for session in guard.sessions() if session.role == role]


def worker_sessions(guard: Guard) -> list[int]:
    return sessions_of(guard, "worker")


def test_a_worker_left_running_on_the_test_database_fails_the_next_drain_naming_it(
    outbox_settings: Settings,
    outbox_session_factory: sessionmaker[Session],
    outbox_key_space: str,
    outbox_drain: Drainer,
    outbox_guard: Guard,
    outbox_sink: Streams,
    tmp_path: Path,
) -> None:
    # What an earlier test would leave behind: a worker on this database that nobody stopped
    # (the plugin's own supervisor, but not the test's: the guard was never told about it).
    leftover = Workers(outbox_settings, f"{outbox_key_space}leftover", tmp_path)
    try:
        worker = leftover.start_worker(concurrency=1)
        leftover.call("outbox.dispatch")  # its first task opens its pooled connection
        wait_until(lambda: worker_sessions(outbox_guard), 30, "the worker to connect")
        [child] = worker_sessions(outbox_guard)
        run_id = seed_run(outbox_session_factory)

        with pytest.raises(pytest.fail.Exception) as failed:
            outbox_drain.run(run_id)

        message = str(failed.value)
        name = f"outbox worker host={host_label()} pid={child}"
        assert f"'{name}'" in message
        assert f"host {host_label()}, pid {child}" in message
        assert outbox_settings.database_url.database in message
        # The pool child that ran the task names itself, not the worker's main process.
        assert child != worker.pid
        assert os.getpgid(child) == worker.pid
        assert "\n" not in message
        # The guard fired before the drain: nothing was published.
        assert outbox_sink.entries(run_id) == []
    finally:
        leftover.stop()  # only now: the drain above ran while it was attached


def test_the_tests_own_worker_does_not_trip_the_guard(
    outbox_session_factory: sessionmaker[Session],
    outbox_worker: Workers,
    outbox_drain: Drainer,
    outbox_guard: Guard,
) -> None:
    outbox_worker.start_worker(concurrency=1)
    outbox_worker.call("outbox.dispatch")
    wait_until(lambda: worker_sessions(outbox_guard), 30, "the worker to connect")
    run_id = seed_run(outbox_session_factory)

    drained = outbox_drain.run(run_id)

    assert [entry.seq for entry in drained.entries(run_id)] == [1, 2]
    assert outbox_guard.foreign() == []
    names = [s.application_name for s in outbox_guard.sessions() if s.role == "worker"]
    assert names
    assert all(re.fullmatch(r"outbox worker host=\S+ pid=\d+", name) for name in names)


def test_a_drain_started_in_a_terminal_fails_the_test_naming_the_outbox_command(
    outbox_settings: Settings,
    outbox_session_factory: sessionmaker[Session],
    outbox_key_space: str,
    outbox_drain: Drainer,
    outbox_guard: Guard,
) -> None:
    run_id = seed_run(outbox_session_factory)
    env = environment(outbox_settings, f"{outbox_key_space}queue", outbox_settings.redis_url)
    command = [str(Path(sys.executable).with_name("outbox")), "drain", str(run_id)]
    # The table locked: the command's drain waits on its first statement, connected meanwhile.
    with psycopg.connect(libpq_url(outbox_settings.database_url)) as lock:
        lock.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        terminal = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: sessions_of(outbox_guard, "cli"), 30, "the command to connect")

            with pytest.raises(pytest.fail.Exception) as failed:
                outbox_drain.run(run_id)

            assert f"'outbox cli host={host_label()} pid={terminal.pid}'" in str(failed.value)
        finally:
            lock.rollback()
            output, _ = terminal.communicate(timeout=60)
    assert '"status": "drained", "published": 2' in output  # the terminal's drain, not ours
