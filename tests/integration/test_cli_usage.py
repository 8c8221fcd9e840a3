"""The `outbox` command's own options, its usage errors, `status` with the sink down, and
advice that fits why the database failed.

Every usage error is one line on stderr, `Error: <what>. See 'outbox <verb> --help'.`, exit
status 2, whether click finds it while reading the arguments or a verb does; a failed
operation is one line with exit status 1 that says what to do about its cause.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from click.testing import Result
from sqlalchemy import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from tasks import runtime
from tasks.settings import Settings
from tasks.testing import services
from tests.helpers import cli, seed

SCRIPT = os.path.join(os.path.dirname(sys.executable), "outbox")
VERSION = importlib.metadata.version("outbox-publisher")
SERVICES = "`outbox services up` starts embedded ones"


@pytest.fixture(autouse=True)
def embedded_start_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`outbox demo` lets its process start the embedded servers; the test process gets its
    own permission back after each test (as it was before)."""
    from models import embedded

    monkeypatch.setattr(embedded, "_allowed", False)


def _installed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=60, check=False, env=os.environ
    )


def _one_line(result: Result, code: int) -> str:
    """The error line of a result that failed with ``code`` and printed nothing else."""
    assert (result.exit_code, result.stdout) == (code, ""), result.output
    assert result.stderr.startswith("Error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    return result.stderr.removeprefix("Error: ").removesuffix("\n")


# the group's own options


@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version_and_its_short_form_print_the_package_and_its_version(option: str) -> None:
    done = _installed(option)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"outbox-publisher {VERSION}\n", "")


@pytest.mark.parametrize("args", [[], ["status"], ["db", "upgrade"], ["replay"]], ids=" ".join)
def test_dash_h_prints_the_same_help_as_dash_dash_help(args: list[str]) -> None:
    short, long = cli(*args, "-h"), cli(*args, "--help")
    assert (short.exit_code, short.stderr) == (0, "")
    assert short.stdout == long.stdout
    assert short.stdout.startswith(f"Usage: outbox{''.join(' ' + a for a in args)} [OPTIONS]")


def test_the_help_lists_every_verb_the_services_group_included() -> None:
    listed = cli("--help").stdout.split("Commands:\n")[1]
    names = [
        line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line[2] != " "
    ]
    assert names == sorted(names)
    assert {"db", "demo", "drain", "emit", "status", "services", "verify"} <= set(names)


def test_outbox_alone_prints_the_help() -> None:
    done = _installed()
    assert done.returncode in (0, 2)
    assert (done.stdout + done.stderr).startswith("Usage: outbox [OPTIONS] COMMAND [ARGS]...")


def test_replay_help_shows_its_run_id_as_optional_since_all_lost_needs_none() -> None:
    usage = cli("replay", "--help").stdout.splitlines()[0]
    assert usage == "Usage: outbox replay [OPTIONS] [RUN_ID]"


# usage errors: one line, whoever finds them


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--bogus"], "No such option '--bogus'. See 'outbox --help'.", id="option"),
        pytest.param(["-x"], "No such option '-x'. See 'outbox --help'.", id="short option"),
        pytest.param(
            ["--version=1"],
            "Option '--version' does not take a value. See 'outbox --help'.",
            id="value to a flag",
        ),
        pytest.param(["frob"], "No such command 'frob'. See 'outbox --help'.", id="verb"),
        pytest.param(
            ["status", "--bogus"],
            "No such option '--bogus'. See 'outbox status --help'.",
            id="verb's option",
        ),
        pytest.param(
            ["emit"], "Missing argument 'RUN_ID'. See 'outbox emit --help'.", id="argument"
        ),
        pytest.param(
            ["status", "--limit"],
            "Option '--limit' requires an argument. See 'outbox status --help'.",
            id="option's value",
        ),
        pytest.param(
            ["db", "frob"], "No such command 'frob'. See 'outbox db --help'.", id="group's verb"
        ),
        pytest.param(
            ["replay"], "Missing argument 'RUN_ID'. See 'outbox replay --help'.", id="replay"
        ),
        pytest.param(
            ["status", "--help=1"],
            "Option '--help' does not take a value. See 'outbox status --help'.",
            id="value to a verb's flag",
        ),
    ],
)
def test_every_usage_error_of_the_installed_command_is_one_line_with_exit_2(
    args: list[str], message: str
) -> None:
    done = _installed(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"Error: {message}\n")


# status: the sink's state from its own PING, and a summary


def test_status_pings_the_sink_and_with_it_down_says_why_first_and_exits_1(
    Session: sessionmaker[Session], settings: Settings
) -> None:
    [run_id] = seed(Session, events=2)
    down = "redis://:s3cret@127.0.0.1:1/0"
    runtime.configure(dataclasses.replace(settings, redis_url=down), session_factory=Session)

    result = cli("status")

    lines = result.stdout.splitlines()
    assert result.exit_code == 1
    assert re.fullmatch(
        r"sink unreachable: redis://:\*\*\*@127\.0\.0\.1:1/0: Error 111 connecting to "
        r"127\.0\.0\.1:1\. Connection refused\.",
        lines[0],
    ), lines[0]
    assert lines[1].startswith("1 run pending (2 events), oldest event ")
    assert lines[3].startswith(f"{run_id}  active ")
    assert result.stderr == (
        "Error: Redis at redis://:***@127.0.0.1:1/0 is unreachable: Error 111 connecting to "
        "127.0.0.1:1. Connection refused. Start it, or point OUTBOX_REDIS_URL at one that "
        f"runs ({SERVICES}).\n"
    )
    assert "s3cret" not in result.output
    assert "Exits with 1 when the sink does not answer" in cli("status", "--help").stdout


def test_status_sums_up_every_pending_run_and_the_oldest_events_age_beyond_the_limit(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    seed(Session, runs=3, events=2)

    result = cli("status", "--limit", "1")

    sink, summary, _header, row = result.stdout.splitlines()
    assert (result.exit_code, result.stderr) == (0, "")
    assert sink == f"sink up: {outbox.settings.redis_url}"
    found = re.fullmatch(r"3 runs pending \(6 events\), oldest event (\d+\.\d)s old", summary)
    assert found is not None, summary
    assert float(found[1]) >= float(row.split()[3].removesuffix("s"))  # the oldest of all


# the database failing: advice that fits the cause

CLOSED_PORT = "postgresql+psycopg://someone:s3cret@127.0.0.1:1/nowhere"


@pytest.fixture
def database(request: pytest.FixtureRequest, outbox_database_server: URL) -> Iterator[URL]:
    """A database URL that fails for the reason the test names."""
    cause = request.param
    if cause == "unreachable":
        yield make_url(CLOSED_PORT)
    elif cause == "no database":
        url = outbox_database_server.set(database=services.unique_name("missing"))
        yield url
        services.drop_database(outbox_database_server, str(url.database))  # if created
    elif cause == "unknown role":
        yield outbox_database_server.set(
            username=f"nobody_{uuid.uuid4().hex[:8]}", password="s3cret"
        )
    else:  # "no schema": a database that exists, without the outbox's tables
        url = services.create_database(outbox_database_server, template="template0")
        yield url
        services.drop_database(outbox_database_server, str(url.database))


ADVICE = {
    "unreachable": (
        r"PostgreSQL at postgresql\+psycopg://someone:\*\*\*@127\.0\.0\.1:1/nowhere is "
        r"unreachable: connection to server at \"127\.0\.0\.1\", port 1 failed: Connection "
        r"refused\. Start it, or point OUTBOX_DATABASE_URL at one that runs \(`outbox services "
        r"up` starts embedded ones\)\."
    ),
    "no database": (
        r"PostgreSQL at \S+ has no such database \(.*database \"\S*missing\S*\" does not "
        r"exist\): run `outbox db upgrade`, which creates it and its schema"
    ),
    "unknown role": (
        r"PostgreSQL at postgresql\+psycopg://nobody_\w+:\*\*\*@\S+ refused the credentials "
        r"\(.*role \"nobody_\w+\" does not exist\): check the user name and password in "
        r"OUTBOX_DATABASE_URL"
    ),
    "no schema": r"the outbox schema here is missing or out of date: run `outbox db upgrade`",
}

VERBS = [["status"], ["create-run"], ["emit", "{run}", "t"], ["drain", "--all"], ["demo"]]


# `db upgrade` and `demo` create a missing database and schema first: no failure to advise on.
CASES = [
    pytest.param(cause, args, id=f"{cause}-{' '.join(args)}")
    for cause in ADVICE
    for args in [*VERBS, ["db", "upgrade"]]
    if not (args in (["db", "upgrade"], ["demo"]) and cause in ("no database", "no schema"))
]


@pytest.mark.parametrize(("database", "args"), CASES, indirect=["database"])
def test_a_database_failure_is_one_line_whose_advice_fits_its_cause(
    database: URL, settings: Settings, request: pytest.FixtureRequest, args: list[str]
) -> None:
    cause = request.node.callspec.params["database"]
    runtime.configure(dataclasses.replace(settings, database_url=database))

    message = _one_line(cli(*(a.format(run=uuid.uuid4()) for a in args)), 1)

    assert re.fullmatch(ADVICE[cause], message), message
    assert "?." not in message
    assert ".." not in message
    assert "s3cret" not in message


# emit: the kick, registered when it is first needed


def test_emit_in_a_fresh_process_kicks_the_run_when_the_environment_asks_for_kicks(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    settings = outbox.settings
    [run_id] = seed(Session, events=0)
    queue = f"{settings.stream_prefix}cli-kicks"
    env = os.environ | {
        "OUTBOX_DATABASE_URL": settings.database_url.render_as_string(hide_password=False),
        "OUTBOX_REDIS_URL": settings.redis_url,
        "CELERY_BROKER_URL": settings.redis_url,
        "OUTBOX_STREAM_PREFIX": settings.stream_prefix,
        "OUTBOX_QUEUED_PREFIX": settings.queued_prefix,
        "OUTBOX_QUEUE": queue,
        "OUTBOX_KICK_ON_COMMIT": "1",
    }
    try:
        done = subprocess.run(
            [SCRIPT, "emit", str(run_id), "t"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{run_id} seq 1\n", "")
        tasks = [json.loads(raw)["headers"]["task"] for raw in redis_client.lrange(queue, 0, -1)]
        assert tasks == ["outbox.drain_kicked"]
    finally:
        redis_client.delete(queue)
