"""Invalid settings stop real `celery -A tasks worker` and `celery -A tasks beat` processes at
start-up (the cases of tests/corpus/environment.py marked ``processes``): each exits with
status 1 at once, having printed exactly one line that names the variable, and nothing else,
no traceback, no banner, no "ready"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.testing import processes
from tasks.testing.processes import CeleryProcess
from tasks.testing.workers import Workers
from tests.corpus import environment
from tests.helpers import wait_until


@pytest.mark.parametrize("case", environment.PROCESS_CASES, ids=lambda case: case.id)
def test_an_invalid_setting_stops_the_worker_and_beat_at_start_up_with_one_line(
    celery_processes: Workers, tmp_path: Path, case: environment.EnvCase
) -> None:
    # Otherwise the environment of this test's own servers and queue: were the setting let
    # through, the processes would touch nothing that other tests or people use.
    env = celery_processes.env | case.env
    hostname = f"{celery_processes.queue}@%h"
    started = [
        CeleryProcess(
            "worker",
            processes.worker_args(celery_processes.queue, hostname, concurrency=1),
            env=env,
            log=tmp_path / "worker.log",
        ),
        CeleryProcess(
            "beat",
            processes.beat_args(tmp_path / "beat-schedule"),
            env=env,
            log=tmp_path / "beat.log",
        ),
    ]
    try:
        for process in started:
            wait_until(lambda process=process: not process.alive(), 60, f"{process.name} to exit")
            assert process.returncode == 1, process.tail()
            assert process.read_log() == f"Error: {case.message}\n"
    finally:
        for process in started:
            process.stop()
