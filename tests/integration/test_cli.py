"""The `outbox` command, in-process (CliRunner) and as the installed console script."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import URL, func, select
from sqlalchemy.orm import Session, sessionmaker

from models import RunEvent
from tasks import runtime
from tasks.cli import main
from tasks.settings import Settings
from tests import services
from tests.helpers import seed, stream_seqs


def outbox(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _events(Session: sessionmaker[Session]) -> int:
    with Session() as session:
        return int(session.scalar(select(func.count()).select_from(RunEvent)) or 0)


def test_emit_drain_and_tail_publish_and_show_the_events_in_order(
    Session: sessionmaker[Session],
    outbox_runtime: runtime.Runtime,
) -> None:
    run_id = outbox("create-run").output.strip()
    assert (
        outbox("emit", run_id, "step", "--payload", '{"n": 1}').output.strip() == f"{run_id} seq 1"
    )
    outbox("emit", run_id, "step", "--payload", '{"n": 2}')

    status = outbox("status")
    [line] = [line for line in status.output.splitlines() if line.startswith(run_id)]
    assert line.split()[1:3] == ["active", "2"]

    drained = outbox("drain", run_id)
    assert json.loads(drained.output) == {
        "run_id": run_id,
        "status": "drained",
        "published": 2,
        "already_present": 0,
    }
    assert outbox("tail", run_id).output == '1\tstep\t{"n": 1}\n2\tstep\t{"n": 2}\n'
    assert outbox("tail", run_id, "--from", "2").output == '2\tstep\t{"n": 2}\n'
    assert outbox("status").output.strip() == "nothing pending"


def test_emit_create_makes_the_run_and_drain_all_drains_every_run(
    Session: sessionmaker[Session],
    outbox_runtime: runtime.Runtime,
    redis_client: redis.Redis,
) -> None:
    run_id = str(uuid.uuid4())
    outbox("emit", run_id, "first", "--create")
    [other] = seed(Session, events=2)

    report = json.loads(outbox("drain", "--all").output)

    assert report == {
        "status": "drained",
        "published": 3,
        "already_present": 0,
        "runs": 2,
        "failed": 0,
    }
    prefix = outbox_runtime.settings.stream_prefix
    assert stream_seqs(redis_client, prefix, uuid.UUID(run_id)) == [1]
    assert stream_seqs(redis_client, prefix, other) == [1, 2]


def test_tail_follow_stops_at_its_timeout(outbox_runtime: runtime.Runtime) -> None:
    run_id = outbox("create-run").output.strip()
    outbox("emit", run_id, "only")
    outbox("drain", run_id)
    assert outbox("tail", run_id, "--follow", "--timeout", "0.2").output == "1\tonly\t{}\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["emit", "not-a-uuid", "t"], 2, "run id must be a UUID"),
        (["emit", "{run}", "t", "--payload", "{not json"], 2, "not valid JSON"),
        (["emit", "{run}", "t", "--payload", "NaN"], 2, "not JSON-serialisable"),
        (["emit", "{run}", "", "--payload", "{}"], 2, "event type must be a non-empty string"),
        (["emit", "{unknown}", "t"], 1, "no run with id"),
        (["drain", "{unknown}"], 1, "no run with id"),
        (["drain", "xyz"], 2, "run id must be a UUID"),
        (["drain"], 2, "give either a RUN_ID or --all"),
        (["tail", "{unknown}"], 1, "no run with id"),
        (["resume"], 2, "give RUN_IDs or --all"),
        (["create-run", "{run}"], 1, "exists already"),
    ],
)
def test_bad_input_gets_a_clear_message_a_nonzero_exit_and_writes_nothing(
    Session: sessionmaker[Session],
    outbox_runtime: runtime.Runtime,
    args: list[str],
    code: int,
    message: str,
) -> None:
    [run_id] = seed(Session, events=1)
    values = {"{run}": str(run_id), "{unknown}": str(uuid.uuid4())}
    result = CliRunner().invoke(main, [values.get(a, a) for a in args])

    assert result.exit_code == code, result.output
    assert message in result.output
    assert _events(Session) == 1


def test_an_oversized_payload_is_refused_by_the_cli(
    Session: sessionmaker[Session],
    outbox_runtime: runtime.Runtime,
) -> None:
    [run_id] = seed(Session, events=0)
    big = json.dumps({"blob": "x" * (1024 * 1024)})
    result = CliRunner().invoke(main, ["emit", str(run_id), "big", "--payload", big])
    assert result.exit_code == 2
    assert "over the limit of 1048576 bytes" in result.output
    assert _events(Session) == 0


def test_an_unreachable_database_is_reported_without_a_traceback_or_password(
    outbox_runtime: runtime.Runtime,
) -> None:
    url = "postgresql+psycopg://someone:s3cret@127.0.0.1:1/nowhere"
    runtime.configure(Settings.from_env({"OUTBOX_DATABASE_URL": url}))
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    assert (
        "PostgreSQL at postgresql+psycopg://someone:***@127.0.0.1:1/nowhere failed" in result.output
    )
    assert "s3cret" not in result.output


@pytest.fixture
def outbox_runtime(outbox: runtime.Runtime) -> runtime.Runtime:
    return outbox


@pytest.fixture
def fresh_database_url(service_urls: services.Services) -> Iterator[URL]:
    """A database name that does not exist yet; dropped afterwards if a test created it."""
    url = service_urls.admin_url.set(database=services.unique_name("new"))
    yield url
    services.drop_database(service_urls.admin_url, str(url.database))


def test_db_upgrade_creates_a_missing_database_and_is_idempotent(
    fresh_database_url: URL,
    settings: Settings,
) -> None:
    runtime.configure(dataclasses.replace(settings, database_url=fresh_database_url))
    first = outbox("db", "upgrade")
    second = outbox("db", "upgrade")
    assert f"created database {fresh_database_url.database!r}" in first.output
    assert "created database" not in second.output
    assert "schema up to date" in second.output


def test_the_installed_outbox_demo_works_on_a_fresh_database(
    fresh_database_url: URL,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    env = os.environ | {
        "OUTBOX_DATABASE_URL": fresh_database_url.render_as_string(hide_password=False),
        "OUTBOX_REDIS_URL": settings.redis_url,
        "OUTBOX_STREAM_PREFIX": settings.stream_prefix,
    }
    script = os.path.join(os.path.dirname(sys.executable), "outbox")
    done = subprocess.run(
        [script, "demo", "--runs", "2", "--events", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "published 6 events to 2 streams" in done.stdout
    assert done.stdout.count('demo.step  {"run": 2, "step": 3}') == 1
    streams = sorted(redis_client.scan_iter(match=f"{settings.stream_prefix}*"))
    assert len(streams) == 2
    assert [redis_client.xlen(key) for key in streams] == [3, 3]
