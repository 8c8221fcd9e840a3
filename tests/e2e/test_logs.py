"""Logs end to end: real prefork workers and beat at --loglevel INFO.

An idle worker logs nothing per dispatch tick; a drain logs one line with its run, seqs,
counts and duration; OUTBOX_LOG_FORMAT=json makes every log record one JSON object.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tasks.testing import processes
from tasks.testing.processes import CeleryProcess
from tasks.testing.workers import Workers
from tests.helpers import db_state, seed, wait_until

TICK = 0.2  # OUTBOX_DISPATCH_INTERVAL: five dispatches a second


def dispatches_run(celery_processes: Workers, worker: CeleryProcess) -> int:
    """How many outbox.dispatch tasks ``worker`` has run (`celery inspect stats`)."""
    # Asked by name, the worker's reply ends the call; a broadcast waits out its timeout. The
    # name is the one the worker's ready line gives.
    [node] = re.findall(r"(\S+@\S+) ready\.", worker.read_log())
    inspect = ("inspect", "stats", "--json", "--timeout", "5", "--destination", node)
    done = subprocess.run(
        [*processes.celery_command(*inspect)],
        cwd=processes.PROJECT_ROOT,
        env=celery_processes.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The broker may hold other tests' workers: ours is named after the test's queue.
    replies = json.loads(done.stdout or "{}")
    ours = [stats for name, stats in replies.items() if name.startswith(celery_processes.queue)]
    return sum(int(stats["total"].get("outbox.dispatch", 0)) for stats in ours)


def test_an_idle_worker_at_info_logs_nothing_per_dispatch_tick(
    Session: sessionmaker[Session],
    celery_processes: Workers,
) -> None:
    with celery_processes.together():
        worker = celery_processes.start_worker()
        beat = celery_processes.start_beat(interval=TICK)
    sent = "Sending due task outbox-dispatch (outbox.dispatch)"
    # Beat's log first (cheap to read), then the worker's count (a `celery inspect` process).
    wait_until(lambda: beat.read_log().count(sent) >= 15, 60, "beat to send 15 dispatches")
    wait_until(lambda: dispatches_run(celery_processes, worker) >= 15, 60, "15 idle dispatch ticks")
    idle = worker.read_log().split(" ready.\n", 1)[1]

    # The worker ran 15 dispatches or more, each sent by beat, and logged no line since it
    # was ready. Beat keeps its line per tick, its sign of life.
    assert idle == ""
    assert beat.read_log().count(sent) >= 15

    # A tick that finds work still says so, and the drain it queues logs its line.
    [run] = seed(Session, runs=1, events=3)
    wait_until(lambda: db_state(Session, run) == (4, 3, 0), 60, "the run to be drained")
    wait_until(lambda: f"drain of run {run}" in worker.read_log(), 30, "the drain's line")
    logs = worker.read_log()
    assert re.search(
        r"Task outbox\.dispatch\[\S+\] succeeded in \S+: \{'found': 1, 'enqueued': 1\}", logs
    )
    assert re.search(
        rf"drain of run {run}: seqs 1-3 published \(3 added, 0 already present\) in "
        r"\d+\.\d{3}s; drained",
        logs,
    )
    assert "Traceback" not in logs


def json_lines(log: str) -> list[dict[str, Any]]:
    """The log's JSON records (Celery's banner, and its shutdown notices, are plain text on
    stdout, not log records)."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_with_json_logs_every_record_is_one_json_object_with_its_fields(
    Session: sessionmaker[Session],
    celery_processes: Workers,
) -> None:
    [run] = seed(Session, runs=1, events=3)
    with celery_processes.together():
        worker = celery_processes.start_worker(OUTBOX_LOG_FORMAT="json")
        beat = celery_processes.start_beat(interval=TICK, OUTBOX_LOG_FORMAT="json")
    wait_until(lambda: f"drain of run {run}" in worker.read_log(), 60, "the drain's line")

    logs = worker.read_log() + beat.read_log()
    assert not re.search(r"^\[\d{4}-", logs, re.MULTILINE)  # no record in Celery's text format
    records = json_lines(logs)
    assert all({"time", "level", "logger", "process", "message"} <= set(r) for r in records)
    assert any(r["message"].endswith(" ready.") for r in records)  # the worker's records
    assert any(r["message"].startswith("beat: Starting") for r in records)  # beat's

    drains = [r for r in records if r["message"].startswith(f"drain of run {run}")]
    # a tick that found the run pending while its drain ran may queue a second drain, which
    # finds nothing left: one drain published the run, any other added nothing
    [drain] = [r for r in drains if r["added"]]
    assert all(r["added"] == r["already_present"] == 0 for r in drains if r is not drain)
    assert drain["level"] == "INFO"
    assert drain["logger"] == "tasks.jobs"
    assert drain["process"].startswith("ForkPoolWorker-")
    assert drain["task"] in {"outbox.drain_run", "outbox.drain_runs"}
    assert drain["task_id"]
    assert drain["run_ids"] == [str(run)]
    assert drain["seqs"] == {str(run): [1, 3]}
    assert (drain["runs"], drain["added"], drain["already_present"]) == (1, 3, 0)
    assert drain["statuses"] == {"drained": 1}
    assert drain["duration_seconds"] > 0
