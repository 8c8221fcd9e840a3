"""The `outbox` command: drain, status, resume, tail and demo, and the servers being down.

Every failure is exactly one line on stderr, `Error: ...`, with exit status 1 (a failed
operation, a drain that could not publish or parked a run included) or 2 (bad input); bad
input writes nothing and credentials never show.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid

import psycopg
import pytest
import redis
from click.testing import Result
from sqlalchemy import func, make_url, select
from sqlalchemy.orm import Session, sessionmaker

from models import Run, RunEvent, RunOutbox
from tasks import api, runtime
from tasks.redis_sink import stream_key
from tasks.settings import Settings
from tests.helpers import cli, seed, stream_seqs

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
DOWN_DATABASE = "postgresql+psycopg://someone:s3cret@127.0.0.1:1/nowhere"
DOWN_REDIS = "redis://:s3cret@127.0.0.1:1/0"
SERVICES = "`outbox services up` starts embedded ones"
REDIS_ADVICE = f"Start it, or point OUTBOX_REDIS_URL at one that runs ({SERVICES})."


def _rows(Session: sessionmaker[Session]) -> tuple[int, int, int]:
    """(runs, events, published events) in the database."""
    with Session() as session:
        runs = session.scalar(select(func.count()).select_from(Run)) or 0
        events = session.scalar(select(func.count()).select_from(RunEvent)) or 0
        published = session.scalar(
            select(func.count()).select_from(RunEvent).where(RunEvent.published_at.is_not(None))
        )
        return runs, events, published or 0


def _cursor(Session: sessionmaker[Session], run_id: uuid.UUID) -> tuple[str, int, int]:
    """(status, attempts, next_seq) of a run's outbox row."""
    with Session() as session:
        row = session.get_one(RunOutbox, run_id)
        return row.status, row.attempts, row.next_seq


def _park(outbox: runtime.Runtime, run_id: uuid.UUID, error: str = "parked by the test") -> None:
    with outbox.store.batch() as batch:
        batch.park({run_id: error})


def _refuse(outbox: runtime.Runtime, redis_client: redis.Redis, run_id: uuid.UUID) -> None:
    """Make the sink refuse the run: its stream key holds a string."""
    redis_client.set(stream_key(outbox.settings.stream_prefix, run_id), "x")


def _redis_refusal(url: str) -> str:
    """What redis-py says when nothing listens at ``url``."""
    with redis.Redis.from_url(url) as client:
        try:
            client.ping()
        except redis.ConnectionError as exc:
            return str(exc)
    raise AssertionError(f"something answers at {url}")


def _postgres_refusal(url: str) -> str:
    """What psycopg says when nothing listens at ``url``: its first line, without the
    "connection failed: " it starts with (the hint lines after it say what ours says)."""
    try:
        psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    except psycopg.OperationalError as exc:
        return str(exc).splitlines()[0].removeprefix("connection failed: ")
    raise AssertionError(f"something answers at {url}")


def _expect(result: Result, code: int, message: str, stdout: str = "") -> None:
    assert (result.exit_code, result.stdout) == (code, stdout), result.output
    assert result.stderr == f"Error: {message}\n"


# drain


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param([], 2, "give either a RUN_ID or --all. See 'outbox drain --help'.", id="none"),
        pytest.param(
            ["{run}", "--all"],
            2,
            "give either a RUN_ID or --all, not both. See 'outbox drain --help'.",
            id="RUN_ID and --all",
        ),
        pytest.param(
            ["xyz"],
            2,
            "Invalid value for '[RUN_ID]': run id must be a UUID, got 'xyz'. "
            "See 'outbox drain --help'.",
            id="malformed run id",
        ),
        pytest.param(["{unknown}"], 1, "no run with id {unknown}", id="unknown run"),
    ],
)
def test_drain_refuses_bad_input_with_one_line_and_publishes_nothing(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
    args: list[str],
    code: int,
    message: str,
) -> None:
    [run_id] = seed(Session, events=2)
    values = {"run": str(run_id), "unknown": str(uuid.uuid4())}

    result = cli("drain", *(a.format(**values) for a in args))

    _expect(result, code, message.format(**values))
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == []
    assert _rows(Session) == (1, 2, 0)


def test_drain_exits_1_while_the_sink_refuses_a_run_and_prints_the_result_that_parks_it(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = seed(Session, events=2)
    _refuse(outbox, redis_client, run_id)
    refused = (
        f"the sink refused run {run_id}: {WRONGTYPE} (entry 1-0); "
        "the attempt is recorded (see `outbox status`)"
    )
    resume = f"Fix the cause, then run `outbox resume {run_id}`."

    _expect(cli("drain", str(run_id)), 1, refused)
    _expect(cli("drain", str(run_id)), 1, refused)
    assert _cursor(Session, run_id) == ("active", 2, 1)

    parked = {
        "run_id": str(run_id),
        "status": "stalled",
        "published": 0,
        "already_present": 0,
        "error": f"{WRONGTYPE} (entry 1-0)",
        "fault": "refused",
    }
    _expect(
        cli("drain", str(run_id)),
        1,
        f"run {run_id} is parked (stalled): {WRONGTYPE} (entry 1-0). {resume}",
        stdout=json.dumps(parked) + "\n",
    )
    assert _cursor(Session, run_id) == ("stalled", 3, 1)

    again = {"run_id": str(run_id), "status": "stalled", "published": 0, "already_present": 0}
    _expect(
        cli("drain", str(run_id)),
        1,
        f"run {run_id} is parked (stalled); see `outbox status` for why. {resume}",
        stdout=json.dumps(again) + "\n",
    )
    assert _rows(Session) == (1, 2, 0)


def test_drain_all_exits_1_when_the_sink_refused_a_run_and_still_publishes_the_others(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    refused, fine = seed(Session, runs=2, events=2)
    _refuse(outbox, redis_client, refused)

    result = cli("drain", "--all")

    report = {"status": "more", "published": 2, "already_present": 0, "runs": 2, "failed": 1}
    _expect(
        result,
        1,
        "1 run(s) could not be published; see `outbox status` for why",
        stdout=json.dumps(report) + "\n",
    )
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, fine) == [1, 2]
    assert _cursor(Session, refused) == ("active", 1, 1)


def test_drain_all_with_nothing_pending_succeeds(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    result = cli("drain", "--all")
    report = {"status": "drained", "published": 0, "already_present": 0, "runs": 0, "failed": 0}
    assert (result.exit_code, result.stdout, result.stderr) == (0, json.dumps(report) + "\n", "")


# status


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--limit", "0"], "0 is not in the range x>=1", id="limit 0"),
        pytest.param(["--limit", "-1"], "-1 is not in the range x>=1", id="limit -1"),
        pytest.param(["--limit", "x"], "'x' is not a valid integer range", id="limit x"),
    ],
)
def test_status_refuses_a_limit_that_is_not_a_positive_integer(
    Session: sessionmaker[Session], outbox: runtime.Runtime, args: list[str], message: str
) -> None:
    seed(Session, events=1)
    _expect(
        cli("status", *args),
        2,
        f"Invalid value for '--limit': {message}. See 'outbox status --help'.",
    )


def ageless(row: str) -> list[str]:
    """A row of `outbox status`'s table without its "oldest" column (an age, in seconds)."""
    fields = row.split()
    return fields[:3] + fields[4:]


def test_status_lists_pending_and_stalled_runs_with_their_last_error_up_to_the_limit(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    [first] = seed(Session, events=1)
    [second] = seed(Session, events=1)
    _park(outbox, second, "seq 1: " + "a long error " * 10)

    every = cli("status")
    one = cli("status", "--limit", "1")

    header = (
        "run                                   status     pending     oldest  attempts  last error"
    )
    sink, summary, *lines = every.stdout.splitlines()
    assert (every.exit_code, every.stderr, lines[0]) == (0, "", header)
    assert sink.startswith("sink up: redis://")
    assert re.fullmatch(
        r"2 runs pending \(2 events\), oldest event \d+\.\ds old; 1 stalled", summary
    )
    assert [line.split()[:3] for line in lines[1:]] == [
        [str(first), "active", "1"],
        [str(second), "stalled", "1"],
    ]
    assert lines[2].endswith("  0  seq 1: a long error a long error a long error a long error a")
    # The same first row (but for its oldest event's age, which grew between the two calls).
    assert one.exit_code == 0
    assert [ageless(line) for line in one.stdout.splitlines()[3:]] == [ageless(lines[1])]
    assert one.stdout.splitlines()[1].startswith("2 runs pending (2 events)")
    huge = cli("status", "--limit", "9" * 30)  # more than any table holds: every run
    assert [line.split()[:3] for line in huge.stdout.splitlines()[3:]] == [
        [str(first), "active", "1"],
        [str(second), "stalled", "1"],
    ]


def test_status_says_since_when_the_sink_is_unavailable_before_the_runs(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    error = "Redis unavailable: ConnectionError: Error 111 connecting to 127.0.0.1:6379."
    outbox.store.sink_down(error, 5.0)
    down_since = outbox.store.sink_health().down_since
    assert down_since is not None
    since = down_since.astimezone(dt.UTC).isoformat(timespec="seconds")
    first_line = f"sink unavailable since {since}: {error}"

    nothing = cli("status")
    [run_id] = seed(Session, events=1)
    pending = cli("status")
    outbox.store.sink_up()
    healthy = cli("status")

    sink = f"sink up: {outbox.settings.redis_url}"  # it answers the PING of `status` itself
    assert (nothing.exit_code, nothing.stdout) == (0, f"{sink}\n{first_line}\nnothing pending\n")
    assert pending.exit_code == 0
    assert pending.stdout.splitlines()[:2] == [sink, first_line]
    assert pending.stdout.splitlines()[2].startswith("1 run pending (1 event), oldest event ")
    assert pending.stdout.splitlines()[3].startswith("run ")
    assert pending.stdout.splitlines()[4].startswith(f"{run_id}  active ")
    assert healthy.stdout.splitlines()[2].startswith("run ")
    assert "sink unavailable" not in healthy.stdout


# resume


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param([], 2, "give RUN_IDs or --all. See 'outbox resume --help'.", id="none"),
        pytest.param(
            ["{stalled}", "--all"],
            2,
            "give RUN_IDs or --all, not both. See 'outbox resume --help'.",
            id="RUN_IDS and --all",
        ),
        pytest.param(
            ["{stalled}", "xyz"],
            2,
            "Invalid value for '[RUN_IDS]...': run id must be a UUID, got 'xyz'. "
            "See 'outbox resume --help'.",
            id="a malformed run id",
        ),
        pytest.param(["{u1}"], 1, "no run with id {u1}", id="unknown run"),
        pytest.param(
            ["{stalled}", "{u1}", "{stalled}"], 1, "no run with id {u1}", id="one of them unknown"
        ),
        pytest.param(
            ["{u1}", "{u2}", "{u3}", "{stalled}", "{u4}", "{u5}"],
            1,
            "no runs with ids {u1}, {u2}, {u3} and 2 more",
            id="five unknown",
        ),
    ],
)
def test_resume_refuses_bad_input_and_unknown_runs_and_resumes_nothing(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    args: list[str],
    code: int,
    message: str,
) -> None:
    [stalled] = seed(Session, events=1)
    _park(outbox, stalled)
    values = {"stalled": str(stalled)} | {f"u{n}": str(uuid.uuid4()) for n in range(1, 6)}

    result = cli("resume", *(a.format(**values) for a in args))

    _expect(result, code, message.format(**values))
    assert _cursor(Session, stalled) == ("stalled", 0, 1)


def test_resume_puts_stalled_runs_back_and_counts_those_that_were_active_already(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    stalled, active, other = seed(Session, runs=3, events=1)
    _park(outbox, stalled)
    _park(outbox, other)

    named = cli("resume", str(stalled), str(active), str(stalled))
    again = cli("resume", str(stalled))
    every = cli("resume", "--all")
    none_left = cli("resume", "--all")

    assert (named.exit_code, named.stdout) == (0, "resumed 1 run(s); 1 active already\n")
    assert (again.exit_code, again.stdout) == (0, "resumed 0 run(s); 1 active already\n")
    assert (every.exit_code, every.stdout) == (0, "resumed 1 run(s)\n")
    assert (none_left.exit_code, none_left.stdout) == (0, "resumed 0 run(s)\n")
    assert [_cursor(Session, r)[0] for r in (stalled, active, other)] == ["active"] * 3


# tail


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(
            ["xyz"],
            2,
            "Invalid value for 'RUN_ID': run id must be a UUID, got 'xyz'. "
            "See 'outbox tail --help'.",
            id="malformed run id",
        ),
        pytest.param(["{unknown}"], 1, "no run with id {unknown}", id="unknown run"),
        pytest.param(
            ["{run}", "--from", "0"],
            2,
            "Invalid value for '--from': 0 is not in the range x>=1. See 'outbox tail --help'.",
            id="from 0",
        ),
        pytest.param(
            ["{run}", "--from", "-3"],
            2,
            "Invalid value for '--from': -3 is not in the range x>=1. See 'outbox tail --help'.",
            id="from -3",
        ),
        pytest.param(
            ["{run}", "--follow", "--timeout", "-1"],
            2,
            "Invalid value for '--timeout': -1.0 is not in the range x>=0. "
            "See 'outbox tail --help'.",
            id="timeout -1",
        ),
        pytest.param(
            ["{run}", "--follow", "--timeout", "nan"],
            2,
            "Invalid value for '--timeout': nan is not a number of seconds. "
            "See 'outbox tail --help'.",
            id="timeout nan",
        ),
        pytest.param(
            ["{run}", "--follow", "--timeout", "inf"],
            2,
            "Invalid value for '--timeout': inf is not a number of seconds. "
            "See 'outbox tail --help'.",
            id="timeout inf",
        ),
        pytest.param(
            ["{run}", "--timeout", "1"],
            2,
            "--timeout needs --follow. See 'outbox tail --help'.",
            id="timeout without follow",
        ),
    ],
)
def test_tail_refuses_bad_input_and_unknown_runs_with_one_line(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    args: list[str],
    code: int,
    message: str,
) -> None:
    [run_id] = seed(Session, events=1)
    api.drain_outbox_for_run(run_id)
    values = {"run": str(run_id), "unknown": str(uuid.uuid4())}

    result = cli("tail", *(a.format(**values) for a in args))

    _expect(result, code, message.format(**values))


def test_tail_from_beyond_any_seq_shows_nothing_and_succeeds(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    [run_id] = seed(Session, events=1)
    api.drain_outbox_for_run(run_id)

    for first in ("2", str(2**63 - 1), "9" * 30):
        result = cli("tail", str(run_id), "--from", first)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", ""), first


def test_tail_escapes_tabs_and_newlines_of_a_foreign_entry_so_it_stays_one_line(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = seed(Session, events=0)
    key = stream_key(outbox.settings.stream_prefix, run_id)
    redis_client.xadd(key, {"type": "a\tb\n2\tforged", "payload": '{"x": "é\u2028"}'}, id="1-0")

    result = cli("tail", str(run_id))

    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == '1\ta\\tb\\n2\\tforged\t{"x": "é\\u2028"}\n'


def test_tail_of_a_stream_key_that_holds_another_type_exits_1_with_redis_answer(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = seed(Session, events=1)
    _refuse(outbox, redis_client, run_id)
    _expect(
        cli("tail", str(run_id)),
        1,
        f"Redis at {outbox.settings.redis_url} refused a command: {WRONGTYPE}",
    )


# demo


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--runs", "0"], "Invalid value for '--runs': 0 is not", id="runs 0"),
        pytest.param(["--runs", "-1"], "Invalid value for '--runs': -1 is not", id="runs -1"),
        pytest.param(["--events", "0"], "Invalid value for '--events': 0 is not", id="events 0"),
        pytest.param(["--events", "-1"], "Invalid value for '--events': -1 is not", id="events -1"),
    ],
)
def test_demo_refuses_counts_below_one_and_writes_nothing(
    Session: sessionmaker[Session], outbox: runtime.Runtime, args: list[str], message: str
) -> None:
    _expect(cli("demo", *args), 2, f"{message} in the range x>=1. See 'outbox demo --help'.")
    assert _rows(Session) == (0, 0, 0)


@pytest.fixture(autouse=True)
def embedded_start_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`outbox demo` lets its process start the embedded servers; the test process gets its
    own permission back after each test (as it was before)."""
    from models import embedded

    monkeypatch.setattr(embedded, "_allowed", False)


def test_demo_creates_drains_and_shows_the_runs(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    from models import embedded

    result = cli("demo", "--runs", "1", "--events", "2")

    assert embedded.start_allowed()  # allowed first: with no server anywhere it starts its own

    assert (result.exit_code, result.stderr) == (0, "")
    assert "published 2 events to 1 streams\n" in result.stdout
    assert '  2-0  demo.step  {"run": 1, "step": 2}\n' in result.stdout
    assert _rows(Session) == (1, 2, 2)


# the servers down, and other failures


@pytest.mark.parametrize(
    ("args", "state"),
    [
        pytest.param(["demo"], "unreachable", id="demo"),
        pytest.param(["tail", "{run}"], "unreachable", id="tail"),
        pytest.param(["tail", "{run}", "--follow"], "unreachable", id="tail --follow"),
        # The drain reports the outage as the sink records it for the workers.
        pytest.param(["drain", "{run}"], "unavailable: ConnectionError", id="drain RUN_ID"),
        pytest.param(["drain", "--all"], "unavailable: ConnectionError", id="drain --all"),
    ],
)
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(DOWN_REDIS, "redis://:***@127.0.0.1:1/0", id="password in the URL"),
        pytest.param(
            "redis://127.0.0.1:1/0?password=s3cret",
            "redis://127.0.0.1:1/0?password=***",
            id="password in the query",
        ),
    ],
)
def test_an_unreachable_sink_is_one_line_exit_1_without_the_password_and_writes_nothing(
    Session: sessionmaker[Session],
    settings: Settings,
    args: list[str],
    state: str,
    url: str,
    shown: str,
) -> None:
    [run_id] = seed(Session, events=1)
    runtime.configure(dataclasses.replace(settings, redis_url=url), session_factory=Session)
    detail = _redis_refusal(url)
    report = {
        "status": "more",
        "published": 0,
        "already_present": 0,
        "runs": 1,
        "failed": 1,
        "outage": f"Redis unavailable: ConnectionError: {detail}",
    }

    result = cli(*(a.format(run=run_id) for a in args))

    _expect(
        result,
        1,
        f"Redis at {shown} is {state}: {detail} {REDIS_ADVICE}",
        stdout=json.dumps(report) + "\n" if args == ["drain", "--all"] else "",
    )
    assert "s3cret" not in result.output
    assert _rows(Session) == (1, 1, 0)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["status"], id="status"),
        pytest.param(["create-run"], id="create-run"),
        pytest.param(["emit", "{run}", "t"], id="emit"),
        pytest.param(["drain", "{run}"], id="drain RUN_ID"),
        pytest.param(["drain", "--all"], id="drain --all"),
        pytest.param(["tail", "{run}"], id="tail"),
        pytest.param(["resume", "{run}"], id="resume RUN_ID"),
        pytest.param(["resume", "--all"], id="resume --all"),
    ],
)
def test_an_unreachable_database_is_one_line_exit_1_without_the_password(
    settings: Settings, args: list[str]
) -> None:
    runtime.configure(dataclasses.replace(settings, database_url=make_url(DOWN_DATABASE)))

    result = cli(*(a.format(run=uuid.uuid4()) for a in args))

    _expect(
        result,
        1,
        "PostgreSQL at postgresql+psycopg://someone:***@127.0.0.1:1/nowhere is unreachable: "
        f"{_postgres_refusal(DOWN_DATABASE)}. Start it, or point OUTBOX_DATABASE_URL at one "
        f"that runs ({SERVICES}).",
    )
    assert "s3cret" not in result.output


def test_demo_with_the_database_down_is_one_line_exit_1_without_the_password(
    settings: Settings,
) -> None:
    runtime.configure(dataclasses.replace(settings, database_url=make_url(DOWN_DATABASE)))

    result = cli("demo")

    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1
    assert "someone:***@127.0.0.1:1/nowhere" in result.stderr
    assert "s3cret" not in result.output


def test_a_malformed_redis_url_in_the_environment_is_one_line_naming_the_variable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.reset()
    monkeypatch.setenv("OUTBOX_DATABASE_URL", settings.database_url.render_as_string(False))
    monkeypatch.setenv("OUTBOX_REDIS_URL", "localhost:6379")

    result = cli("status")

    _expect(
        result,
        1,
        "OUTBOX_REDIS_URL is not a valid Redis URL: Redis URL must specify one of the "
        "following schemes (redis://, rediss://, unix://)",
    )


def test_an_unknown_verb_is_one_line_exit_2(outbox: runtime.Runtime) -> None:
    _expect(cli("frob"), 2, "No such command 'frob'. See 'outbox --help'.")


def test_an_unexpected_error_inside_a_verb_is_one_line_exit_1_not_a_traceback(
    Session: sessionmaker[Session], outbox: runtime.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(api, "drain_outbox_once", broken)

    _expect(
        cli("drain", "--all"),
        1,
        "unexpected RuntimeError: boom second line (a bug in outbox: please report it)",
    )
