"""The `outbox` command: producing (create-run, emit), the schema, and the installed script.

Every failure is exactly one line on stderr, `Error: ...`, with exit status 1 (a failed
operation) or 2 (bad input), and bad input writes nothing. test_cli_ops.py covers the other
verbs and the servers being down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import URL, func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Run, RunEvent
from tasks import runtime
from tasks.cli import main
from tasks.settings import Settings
from tasks.testing import services
from tests.helpers import seed, stream_seqs

MIB = 1024 * 1024


def outbox(*args: str, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def _rows(Session: sessionmaker[Session]) -> tuple[int, int]:
    """(runs, events) in the database."""
    with Session() as session:
        runs = session.scalar(select(func.count()).select_from(Run))
        events = session.scalar(select(func.count()).select_from(RunEvent))
        return int(runs or 0), int(events or 0)


def _payloads(Session: sessionmaker[Session], run_id: uuid.UUID) -> list[object]:
    with Session() as session:
        query = select(RunEvent.payload).where(RunEvent.run_id == run_id).order_by(RunEvent.seq)
        return list(session.scalars(query))


@pytest.fixture
def outbox_runtime(outbox: runtime.Runtime) -> runtime.Runtime:
    return outbox


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
    after = outbox("status").output.splitlines()
    assert after[0].startswith("sink up: redis://")
    assert after[1:] == ["nothing pending"]


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


def test_create_run_makes_a_run_with_a_new_or_the_given_id(
    Session: sessionmaker[Session], outbox_runtime: runtime.Runtime
) -> None:
    chosen = str(uuid.uuid4())

    generated = outbox("create-run")
    given = outbox("create-run", chosen)

    assert (generated.exit_code, generated.stderr) == (0, "")
    assert uuid.UUID(generated.stdout.strip())
    assert (given.exit_code, given.stdout, given.stderr) == (0, f"{chosen}\n", "")
    assert _rows(Session) == (2, 0)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(
            ["create-run", "xyz"],
            2,
            "Invalid value for '[RUN_ID]': run id must be a UUID, got 'xyz'. "
            "See 'outbox create-run --help'.",
            id="malformed id",
        ),
        pytest.param(
            ["create-run", ""],
            2,
            "Invalid value for '[RUN_ID]': run id must be a UUID, got ''. "
            "See 'outbox create-run --help'.",
            id="empty id",
        ),
        pytest.param(
            ["create-run", "{run}"],
            1,
            "a run with id {run} exists already",
            id="taken id",
        ),
        pytest.param(
            ["create-run", "{unknown}", "{unknown}"],
            2,
            "Got unexpected extra argument ({unknown}). See 'outbox create-run --help'.",
            id="two ids",
        ),
    ],
)
def test_create_run_refuses_a_malformed_or_taken_id_with_one_line_and_writes_nothing(
    Session: sessionmaker[Session],
    outbox_runtime: runtime.Runtime,
    args: list[str],
    code: int,
    message: str,
) -> None:
    [run_id] = seed(Session, events=1)
    values = {"run": str(run_id), "unknown": str(uuid.uuid4())}

    result = outbox(*(a.format(**values) for a in args))

    assert (result.exit_code, result.stdout) == (code, "")
    assert result.stderr == f"Error: {message.format(**values)}\n"
    assert _rows(Session) == (1, 1)


LONG_TYPE = "t" * 256
DEEP = "[" * 10_000 + "]" * 10_000
HUGE_INT = "1" * 5000


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(
            ["not-a-uuid", "t"],
            2,
            "Invalid value for 'RUN_ID': run id must be a UUID, got 'not-a-uuid'. "
            "See 'outbox emit --help'.",
            id="malformed run id",
        ),
        pytest.param(["{unknown}", "t"], 1, "no run with id {unknown}", id="unknown run"),
        pytest.param(
            ["{run}"], 2, "Missing argument 'TYPE'. See 'outbox emit --help'.", id="no type"
        ),
        pytest.param(
            ["{run}", "", "--payload", "{}"],
            2,
            "event type must be a non-empty string, got ''",
            id="empty type",
        ),
        pytest.param(
            ["{run}", "a\tforged\n99", "--payload", "{}"],
            2,
            "event type must be printable text (no tabs, newlines, control characters or "
            "lone surrogates), got 'a\\tforged\\n99'",
            id="type with a tab and a newline",
        ),
        pytest.param(
            ["{run}", LONG_TYPE],
            2,
            "event type is 256 characters, over the limit of 255",
            id="type of 256 characters",
        ),
        pytest.param(
            ["{run}", "t", "--payload", "{not json"],
            2,
            "Invalid value for '--payload': not valid JSON: Expecting property name enclosed "
            "in double quotes: line 1 column 2 (char 1). See 'outbox emit --help'.",
            id="payload not JSON",
        ),
        pytest.param(
            ["{run}", "t", "--payload", "NaN"],
            2,
            "payload is not JSON-serialisable: Out of range float values are not JSON compliant",
            id="NaN payload",
        ),
        pytest.param(
            ["{run}", "t", "--payload", '"\\ud800"'],
            2,
            "payload contains a lone surrogate (such as \\ud800), which is not valid Unicode text",
            id="lone surrogate",
        ),
        pytest.param(
            ["{run}", "t", "--payload", '{"a": "\\u0000"}'],
            2,
            "payload contains U+0000, which PostgreSQL JSONB cannot store",
            id="NUL in a string",
        ),
        pytest.param(
            ["{run}", "t", "--payload", DEEP],
            2,
            "Invalid value for '--payload': JSON nested too deeply to read. "
            "See 'outbox emit --help'.",
            id="nested 10000 levels",
        ),
        pytest.param(
            ["{run}", "t", "--payload", HUGE_INT],
            2,
            "Invalid value for '--payload': not valid JSON: Exceeds the limit (4300 digits) for "
            "integer string conversion: value has 5000 digits; use sys.set_int_max_str_digits() "
            "to increase the limit. See 'outbox emit --help'.",
            id="integer of 5000 digits",
        ),
        pytest.param(
            ["{run}", "t", "--payload", json.dumps({"blob": "x" * MIB})],
            2,
            "payload is 1048587 bytes as JSON, over the limit of 1048576 bytes "
            "(set OUTBOX_MAX_PAYLOAD_BYTES to change it)",
            id="payload over 1 MiB",
        ),
        pytest.param(
            ["{unknown}", "a\tb", "--create"],
            2,
            "event type must be printable text (no tabs, newlines, control characters or "
            "lone surrogates), got 'a\\tb'",
            id="bad type with --create",
        ),
        pytest.param(
            ["{run}", "t", "--payload", "{}", "--payload-file", "{file}"],
            2,
            "give --payload or --payload-file, not both. See 'outbox emit --help'.",
            id="both payload options",
        ),
        pytest.param(
            ["{run}", "t", "--payload-file", "{missing}"],
            2,
            "Invalid value for '--payload-file': '{missing}': No such file or directory. "
            "See 'outbox emit --help'.",
            id="payload file missing",
        ),
        pytest.param(
            ["{run}", "t", "--payload-file", "{directory}"],
            2,
            "Invalid value for '--payload-file': '{directory}': Is a directory. "
            "See 'outbox emit --help'.",
            id="payload file is a directory",
        ),
        pytest.param(
            ["{run}", "t", "--payload-file", "{latin1}"],
            2,
            "Invalid value for '--payload-file': not UTF-8 text (invalid continuation byte at "
            "byte 10). See 'outbox emit --help'.",
            id="payload file not UTF-8",
        ),
        pytest.param(
            ["{run}", "t", "--payload-file", "{broken}"],
            2,
            "Invalid value for '--payload-file': not valid JSON: Expecting value: line 1 "
            "column 7 (char 6). See 'outbox emit --help'.",
            id="payload file not JSON",
        ),
    ],
)
def test_emit_refuses_bad_input_with_one_line_and_writes_nothing(
    Session: sessionmaker[Session],
    outbox_runtime: runtime.Runtime,
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    [run_id] = seed(Session, events=1)
    (tmp_path / "latin1.json").write_bytes('{"a": "caf\xe9"}'.encode("latin-1"))
    (tmp_path / "broken.json").write_text('{"a": }', encoding="utf-8")
    (tmp_path / "ok.json").write_text("{}", encoding="utf-8")
    values = {
        "run": str(run_id),
        "unknown": str(uuid.uuid4()),
        "file": str(tmp_path / "ok.json"),
        "missing": str(tmp_path / "missing.json"),
        "directory": str(tmp_path),
        "latin1": str(tmp_path / "latin1.json"),
        "broken": str(tmp_path / "broken.json"),
    }
    fill = {f"{{{name}}}": value for name, value in values.items()}

    result = outbox("emit", *(fill.get(a, a) for a in args))

    expected = message
    for placeholder, value in fill.items():
        expected = expected.replace(placeholder, value)
    assert (result.exit_code, result.stdout) == (code, "")
    assert result.stderr == f"Error: {expected}\n"
    assert _rows(Session) == (1, 1)


def test_emit_reads_a_payload_near_the_limit_from_a_file_or_standard_input(
    Session: sessionmaker[Session], outbox_runtime: runtime.Runtime, tmp_path: Path
) -> None:
    [run_id] = seed(Session, events=0)
    big = {"blob": "é" * ((MIB - 100) // 2)}  # two bytes each in UTF-8: just under 1 MiB
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big, ensure_ascii=False), encoding="utf-8")

    from_file = outbox("emit", str(run_id), "big", "--payload-file", str(path))
    from_stdin = outbox("emit", str(run_id), "small", "--payload-file", "-", input='{"n": 1}')

    assert (from_file.exit_code, from_file.stdout, from_file.stderr) == (
        0,
        f"{run_id} seq 1\n",
        "",
    )
    assert (from_stdin.exit_code, from_stdin.stdout, from_stdin.stderr) == (
        0,
        f"{run_id} seq 2\n",
        "",
    )
    assert _payloads(Session, run_id) == [big, {"n": 1}]


def test_emit_defaults_the_payload_to_an_empty_object(
    Session: sessionmaker[Session], outbox_runtime: runtime.Runtime
) -> None:
    [run_id] = seed(Session, events=0)
    result = outbox("emit", str(run_id), "t")
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"{run_id} seq 1\n", "")
    assert _payloads(Session, run_id) == [{}]


@pytest.fixture
def fresh_database_url(outbox_database_server: URL) -> Iterator[URL]:
    """A database name that does not exist yet; dropped afterwards if a test created it."""
    url = outbox_database_server.set(database=services.unique_name("new"))
    yield url
    services.drop_database(outbox_database_server, str(url.database))


@pytest.fixture
def empty_database_url(outbox_database_server: URL) -> Iterator[URL]:
    """A database that exists but has no tables."""
    url = services.create_database(outbox_database_server, template="template0")
    yield url
    services.drop_database(outbox_database_server, str(url.database))


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


def test_a_database_without_the_schema_is_reported_with_the_command_that_creates_it(
    empty_database_url: URL, settings: Settings
) -> None:
    runtime.configure(dataclasses.replace(settings, database_url=empty_database_url))

    for args in (["status"], ["create-run"], ["emit", str(uuid.uuid4()), "t"]):
        result = outbox(*args)
        assert (result.exit_code, result.stdout) == (1, ""), args
        assert result.stderr == (
            "Error: the outbox schema here is missing or out of date: run `outbox db upgrade`\n"
        )


def test_db_upgrade_of_an_unreachable_server_is_one_line_without_the_password(
    settings: Settings,
) -> None:
    url = "postgresql+psycopg://someone:s3cret@127.0.0.1:1/nowhere"
    runtime.configure(Settings.from_env({"OUTBOX_DATABASE_URL": url}))

    result = outbox("db", "upgrade")

    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1
    assert "someone:***@127.0.0.1:1/nowhere" in result.stderr
    assert "s3cret" not in result.output


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


def test_the_installed_outbox_reports_bad_input_with_exit_2_and_one_line(
    settings: Settings,
) -> None:
    script = os.path.join(os.path.dirname(sys.executable), "outbox")
    done = subprocess.run(
        [script, "status", "--limit", "-1"],
        env=os.environ | {"OUTBOX_DATABASE_URL": settings.database_url.render_as_string(False)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "Error: Invalid value for '--limit': -1 is not in the range x>=1. "
        "See 'outbox status --help'.\n"
    )
