"""The Celery tasks against the bad-input corpus (tests/corpus/tasks.py), on a real worker.

One worker serves every case of this module (starting one per case would take most of the
run): each case sends its bad message to the worker's queue, waits for the one line the
worker logs about it, checks that nothing was written, and then has the same worker drain
a real run, so a case that broke the worker fails there.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import URL, func, select
from sqlalchemy.orm import Session, sessionmaker

from models import RunEvent, RunOutbox
from models.db import make_engine
from tasks.settings import Settings
from tasks.testing import services
from tasks.testing.processes import CeleryProcess
from tasks.testing.workers import Workers
from tests.corpus.tasks import CASES, TaskCase
from tests.helpers import db_state, seed, stream_seqs, wait_until
from tests.workers import delete_queue

MAX_LINE_CHARS = 1000  # no log line echoes a megabyte argument


@dataclasses.dataclass
class Worker:
    """The module's worker, the queue it consumes, and what the cases need around it."""

    process: CeleryProcess
    queue: str
    settings: Settings
    Session: sessionmaker[Session]
    redis: redis.Redis
    sender: Celery

    def send(self, task: str, args: list[object], kwargs: dict[str, object]) -> str:
        """Send a JSON message to the worker's queue, the way any producer could."""
        task_id = str(uuid.uuid4())
        self.sender.send_task(task, args=args, kwargs=kwargs, queue=self.queue, task_id=task_id)
        return task_id

    def outcome(self, task_id: str) -> str:
        """The line the worker logs when the task ends (raised or succeeded)."""
        found: list[str] = []

        def ended() -> bool:
            found[:] = [
                line
                for line in self.process.read_log().splitlines()
                if f"[{task_id}]" in line and (" raised " in line or " succeeded in " in line)
            ]
            return bool(found)

        wait_until(ended, 30, f"the worker to finish task {task_id}")
        [line] = found
        return line


@pytest.fixture(scope="module")
def worker(
    outbox_database_server: URL,
    outbox_redis_server: str,
    outbox_template: URL,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    database = services.create_database(outbox_database_server, str(outbox_template.database))
    key_space = services.key_space()
    settings = Settings(
        database_url=database,
        redis_url=outbox_redis_server,
        stream_prefix=f"{key_space}run:",
        queued_prefix=f"{key_space}queued:",
        max_attempts=3,
    )
    engine = make_engine(database)
    client = redis.Redis.from_url(outbox_redis_server, socket_timeout=10)
    queue = f"{key_space}queue"
    workdir: Path = tmp_path_factory.mktemp("corpus-tasks")
    supervisor = Workers(settings, queue, workdir, settings.redis_url)
    sender = Celery("corpus-sender", broker=settings.redis_url, set_as_current=False)
    sender.conf.update(task_serializer="json", accept_content=["json"])
    try:
        process = supervisor.start_worker(concurrency=1)
        yield Worker(
            process, queue, settings, sessionmaker(engine, expire_on_commit=False), client, sender
        )
    finally:
        supervisor.stop()
        sender.close()
        delete_queue(settings.redis_url, queue, client)
        services.delete_keys(client, f"{key_space}*")
        client.close()
        engine.dispose()
        services.drop_database(outbox_database_server, str(database.database))


def _written(worker: Worker, run_id: uuid.UUID) -> tuple[object, ...]:
    """What a bad message must not change: the events, the run's cursor, the streams."""
    with worker.Session() as session:
        events = session.scalar(select(func.count()).select_from(RunEvent))
        published = session.scalar(select(func.count(RunEvent.published_at)))
        cursor = session.execute(
            select(
                RunOutbox.next_seq, RunOutbox.status, RunOutbox.attempts, RunOutbox.last_error
            ).where(RunOutbox.run_id == run_id)
        ).one()
    streams = len(list(worker.redis.scan_iter(match=f"{worker.settings.stream_prefix}*")))
    return events, published, tuple(cursor), streams


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_real_worker_refuses_each_bad_message_in_one_line_writes_nothing_and_serves_on(
    worker: Worker, case: TaskCase
) -> None:
    [run_id] = seed(worker.Session, events=2)
    run = str(run_id)
    before = _written(worker, run_id)

    task_id = worker.send(case.task, case.args(run), case.kwargs(run))
    line = worker.outcome(task_id)

    if case.error is not None:
        expected = case.error(case.message(run))
        assert line.endswith(f"Task {case.task}[{task_id}] raised expected: {expected!r}"), line
    else:
        assert f"Task {case.task}[{task_id}] succeeded in " in line, line
        assert line.endswith(f": {case.returns!r}"), line
    log = worker.process.read_log()
    assert "Traceback" not in log
    assert max(len(entry) for entry in log.splitlines()) < MAX_LINE_CHARS
    assert _written(worker, run_id) == before
    assert db_state(worker.Session, run_id) == (1, 0, 2)

    # The same worker still drains a real run.
    worker.send("outbox.drain_run", [run], {})
    wait_until(lambda: db_state(worker.Session, run_id) == (3, 2, 0), 30, "the good drain")
    assert stream_seqs(worker.redis, worker.settings.stream_prefix, run_id) == [1, 2]
    assert worker.process.alive()
