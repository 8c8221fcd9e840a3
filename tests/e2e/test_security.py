"""Security end to end: the workers refuse pickle, credentials never show, and the publisher
runs under the least-privileged PostgreSQL roles that the snippet of docs/security.md creates."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from celery import Celery
from click.testing import CliRunner
from psycopg import sql as pgsql
from sqlalchemy import URL, Engine, select
from sqlalchemy.orm import Session, sessionmaker

from models import RunOutbox
from models.db import libpq_url, make_engine
from tasks import app, runtime
from tasks.cli import main
from tasks.redis_sink import stream_key
from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.workers import Workers
from tests.helpers import db_state, seed, stream_seqs, wait_until
from tests.servers import RedisServer, redis_server

OUTBOX = str(Path(sys.executable).with_name("outbox"))


class Trap:
    """An object whose unpickling creates ``path``: if the file exists, someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def test_a_worker_refuses_a_pickled_message_without_unpickling_it_and_serves_on(
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
    tmp_path: Path,
) -> None:
    assert list(app.conf.accept_content) == ["json"]
    assert list(app.conf.result_accept_content) == ["json"]
    [run_id] = seed(Session, events=2)
    worker = celery_processes.start_worker(concurrency=1)
    trap = tmp_path / "unpickled"

    sender = Celery("pickle-sender", broker=settings.redis_url, set_as_current=False)
    try:
        sender.send_task(
            "outbox.drain_run",
            args=[Trap(trap)],
            queue=celery_processes.queue,
            serializer="pickle",
        )
    finally:
        sender.close()
    refusal = "Refusing to deserialize untrusted content of type pickle"
    wait_until(lambda: refusal in worker.read_log(), 30, "the worker to refuse the message")

    assert not trap.exists()
    assert redis_client.llen(celery_processes.queue) == 0  # dropped, not handed back
    celery_processes.call("outbox.drain_run", str(run_id))
    wait_until(lambda: db_state(Session, run_id) == (3, 2, 0), 30, "a JSON drain after it")
    assert worker.alive()
    assert not trap.exists()


# Credentials


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A private Redis that requires a password (set once it runs: the harness pings it
    without one while it starts)."""
    password = f"redis-pw-{uuid.uuid4().hex}"
    with redis_server(tmp_path) as server:
        server.client().config_set("requirepass", password)
        yield server, password


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=processes.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_credential_appears_in_logs_task_results_the_report_or_cli_output(
    Session: sessionmaker[Session],
    settings: Settings,
    celery_processes: Workers,
    guarded_redis: tuple[RedisServer, str],
) -> None:
    server, redis_password = guarded_redis
    database_password = f"db-pw-{uuid.uuid4().hex}"  # trust auth accepts it, and ignores it
    with pytest.raises(redis.AuthenticationError):
        server.client().ping()  # the password is needed, so every client below sends it
    redis_url = f"redis://:{redis_password}@127.0.0.1:{server.port}"
    database_url = settings.database_url.set(password=database_password)
    env = {
        "OUTBOX_DATABASE_URL": database_url.render_as_string(hide_password=False),
        "OUTBOX_REDIS_URL": f"{redis_url}/0",
        "CELERY_BROKER_URL": f"{redis_url}/1",
        "CELERY_RESULT_BACKEND": f"{redis_url}/2",
    }
    runs = seed(Session, runs=2, events=2)
    with celery_processes.together():
        celery_processes.start_worker(concurrency=1, **env)
        celery_processes.start_beat(interval=0.2, **env)
    sink = server.client(password=redis_password)
    for run_id in runs:
        wait_until(lambda run_id=run_id: db_state(Session, run_id) == (3, 2, 0), 30, "drained")
        assert stream_seqs(sink, settings.stream_prefix, run_id) == [1, 2]
    process_env = celery_processes.env | env
    outputs: dict[str, str] = {}

    def record(name: str, done: subprocess.CompletedProcess[str], code: int = 0) -> None:
        assert done.returncode == code, f"{name}: {done.stdout}{done.stderr}"
        outputs[name] = done.stdout + done.stderr

    # Task results, stored in the result backend: a success and a failure.
    call = processes.celery_command("call", "outbox.drain_run", "--args")
    record("call good", _run([*call, f'["{runs[0]}"]'], process_env))
    record("call bad", _run([*call, '["not-a-uuid"]'], process_env))
    results = server.client(password=redis_password, db=2)
    wait_until(lambda: len(list(results.scan_iter(match="celery-task-meta-*"))) >= 2, 30, "results")
    stored = [results.get(key) for key in results.scan_iter(match="celery-task-meta-*")]
    outputs["results"] = "\n".join(value.decode() for value in stored if value)
    assert '"status": "SUCCESS"' in outputs["results"]
    assert "InvalidRunId" in outputs["results"]
    # celery report, and the outbox command, successful and failing.
    record("report", _run(processes.celery_command("report"), process_env))
    assert "broker_url: 'redis://:********@127.0.0.1" in outputs["report"]
    for args in (["db", "upgrade"], ["status"], ["drain", "--all"], ["tail", str(runs[0])]):
        record(" ".join(args), _run([OUTBOX, *args], process_env))
    assert "postgresql+psycopg://postgres:***@127.0.0.1" in outputs["db upgrade"]
    wrong = process_env | {
        "OUTBOX_REDIS_URL": f"redis://:{redis_password}x@127.0.0.1:{server.port}"
    }
    record("tail, wrong password", _run([OUTBOX, "tail", str(runs[0])], wrong), code=1)
    assert f"redis://:***@127.0.0.1:{server.port}" in outputs["tail, wrong password"]
    down = process_env | {
        "OUTBOX_DATABASE_URL": database_url.set(port=1).render_as_string(hide_password=False)
    }
    record("status, database down", _run([OUTBOX, "status"], down), code=1)
    assert "postgres:***@127.0.0.1:1" in outputs["status, database down"]

    outputs["worker and beat logs"] = celery_processes.logs()
    assert "redis://:**@127.0.0.1" in outputs["worker and beat logs"]  # Celery's own mask
    for name, text in outputs.items():
        for password in (redis_password, database_password):
            assert password not in text, f"{name} shows a password"


# Least privilege


def documented_grants(database: str, worker: str, producer: str) -> list[str]:
    """The security page's GRANT statements, for this database and these roles."""
    page = (processes.PROJECT_ROOT / "docs" / "security.md").read_text()
    snippet = page.split("```sql\n", 1)[1].split("```", 1)[0]
    grants = [line for line in snippet.splitlines() if line.startswith("GRANT ")]
    assert grants, "docs/security.md has no GRANT statements"
    names = {"outbox_worker": worker, "outbox_producer": producer, "DATABASE outbox": "DATABASE"}
    statements = []
    for grant in grants:
        for old, new in names.items():
            grant = re.sub(rf"\b{old}\b", new, grant)
        statements.append(grant.replace("DATABASE TO", f'DATABASE "{database}" TO'))
    return statements


@pytest.fixture
def restricted_roles(db_url: URL) -> Iterator[tuple[URL, URL]]:
    """A worker role and a producer role with the security page's privileges on this test's
    database (and nothing else); both dropped afterwards, with what was granted to them."""
    suffix = uuid.uuid4().hex[:12]
    worker, producer = f"outbox_test_worker_{suffix}", f"outbox_test_producer_{suffix}"
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        for role in (worker, producer):
            conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(role)))
        try:
            for statement in documented_grants(str(db_url.database), worker, producer):
                conn.execute(statement.encode())
            yield db_url.set(username=worker), db_url.set(username=producer)
        finally:
            for role in (worker, producer):
                conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(role)))
                conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))


def _refused(engine: Engine, statement: str, run_id: uuid.UUID) -> bool:
    """True if PostgreSQL refuses ``statement`` (about ``run_id``, its one parameter, if it
    has one) to the engine's role for lack of privilege. Nothing it does is kept."""
    with psycopg.connect(libpq_url(engine.url)) as conn:
        try:
            conn.execute(statement.encode(), {"run": run_id} if "%(run)s" in statement else None)
        except psycopg.errors.InsufficientPrivilege:
            return True
        finally:
            conn.rollback()
    return False


def test_workers_and_producers_run_under_the_least_privileged_roles_of_the_security_page(
    restricted_roles: tuple[URL, URL],
    Session: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    celery_processes: Workers,
) -> None:
    worker_url, producer_url = restricted_roles
    worker_engine, producer_engine = make_engine(worker_url), make_engine(producer_url)
    try:
        as_producer = sessionmaker(producer_engine, expire_on_commit=False)
        runs = seed(as_producer, runs=3, events=2)  # create_run and append_event
        refused = runs[2]
        redis_client.set(stream_key(settings.stream_prefix, refused), "not a stream")
        worker_env = {"OUTBOX_DATABASE_URL": worker_url.render_as_string(hide_password=False)}
        with celery_processes.together():
            celery_processes.start_worker(concurrency=1, **worker_env)
            celery_processes.start_beat(interval=0.2, **worker_env)

        for run_id in runs[:2]:
            wait_until(lambda run_id=run_id: db_state(Session, run_id) == (3, 2, 0), 30, "drain")
            assert stream_seqs(redis_client, settings.stream_prefix, run_id) == [1, 2]
        # The sink refuses the third run: its attempts are recorded, as the worker role.
        wait_until(lambda: _attempts(Session, refused) > 0, 30, "a recorded refusal")
        # The verbs that workers' operators run: status and resume.
        runtime.configure(dataclasses.replace(settings, database_url=worker_url))
        status = CliRunner().invoke(main, ["status"], catch_exceptions=False)
        assert (status.exit_code, status.stderr) == (0, ""), status.output
        assert str(refused) in status.stdout
        resumed = CliRunner().invoke(main, ["resume", "--all"], catch_exceptions=False)
        assert (resumed.exit_code, resumed.stderr) == (0, ""), resumed.output
        assert "Traceback" not in celery_processes.logs()

        # And nothing more than that.
        for statement in (
            "INSERT INTO run_events (run_id, seq, type, payload) VALUES (%(run)s, 9, 't', '{}')",
            "DELETE FROM runs WHERE id = %(run)s",
            "UPDATE runs SET last_seq = 0 WHERE id = %(run)s",
            "UPDATE run_events SET payload = '{}' WHERE run_id = %(run)s",
            "TRUNCATE run_outbox",
        ):
            assert _refused(worker_engine, statement, runs[0]), statement
        for statement in (
            "UPDATE run_events SET published_at = now() WHERE run_id = %(run)s",
            "UPDATE run_outbox SET next_seq = 1 WHERE run_id = %(run)s",
            "DELETE FROM run_events WHERE run_id = %(run)s",
            "SELECT payload FROM run_events WHERE run_id = %(run)s",
        ):
            assert _refused(producer_engine, statement, runs[0]), statement
    finally:
        worker_engine.dispose()
        producer_engine.dispose()


def _attempts(Session: sessionmaker[Session], run_id: uuid.UUID) -> int:
    """The refusals recorded for the run, as the test's owner role reads them."""
    with Session() as session:
        query = select(RunOutbox.attempts, RunOutbox.status).where(RunOutbox.run_id == run_id)
        attempts, status = session.execute(query).one()
    return int(attempts) or int(status == "stalled")
