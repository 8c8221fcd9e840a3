"""The `outbox` command against the bad-input corpus: bad arguments (tests/corpus/cli.py) and
invalid settings (tests/corpus/environment.py), for every verb.

Each ends with the exit status docs/cli.md promises (2 for bad input, 1 for a failed
operation, which an invalid setting is), one line on stderr, no traceback, and nothing
written.
"""

from __future__ import annotations

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Run, RunEvent, RunOutbox
from tasks import runtime
from tasks.cli import main
from tests.corpus import cli, environment
from tests.helpers import seed

# Every verb, with arguments it would accept: an invalid setting must stop each one first.
VERBS = [
    ["db", "upgrade"],
    ["create-run"],
    ["emit", "{run}", "t"],
    ["drain", "{run}"],
    ["drain", "--all"],
    ["status"],
    ["resume", "{run}"],
    ["resume", "--all"],
    ["tail", "{run}"],
    ["demo"],
    ["purge"],
    ["verify", "{run}"],
    ["verify", "--all"],
    ["replay", "{run}"],
]


@pytest.fixture(autouse=True)
def embedded_start_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`outbox demo` lets its process start the embedded servers; the test process gets its
    own permission back after each test (as it was before)."""
    from models import embedded

    monkeypatch.setattr(embedded, "_allowed", False)


def run_outbox(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _written(Session: sessionmaker[Session], client: redis.Redis, prefix: str) -> object:
    """Runs, events, cursors and streams: what a refused command must leave as it was."""
    with Session() as session:
        runs = session.scalar(select(func.count()).select_from(Run))
        events = session.scalar(select(func.count(RunEvent.id)))
        published = session.scalar(select(func.count(RunEvent.published_at)))
        cursors = session.execute(
            select(
                RunOutbox.run_id, RunOutbox.next_seq, RunOutbox.status, RunOutbox.attempts
            ).order_by(RunOutbox.run_id)
        ).all()
    return runs, events, published, cursors, sorted(client.scan_iter(match=f"{prefix}*"))


def _one_error_line(result: Result, message: str, *, exact: bool = True) -> None:
    assert result.stderr.startswith("Error: "), result.output[:500]
    assert result.stderr.count("\n") == 1, result.stderr[:500]
    if exact:
        assert result.stderr == f"Error: {message}\n"
    else:
        assert message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", cli.CASES, ids=lambda case: case.id)
def test_each_verb_refuses_bad_arguments_with_its_exit_status_and_one_line(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
    case: cli.CliCase,
) -> None:
    [run_id] = seed(Session, events=2)
    run = str(run_id)
    prefix = outbox.settings.stream_prefix
    before = _written(Session, redis_client, prefix)

    result = run_outbox(*case.args(run))

    assert (result.exit_code, result.stdout) == (case.code, case.stdout(run)), result.output[:500]
    if case.code == 0:
        assert result.stderr == ""
    else:
        _one_error_line(result, case.message(run), exact=case.exact)
    assert _written(Session, redis_client, prefix) == before


@pytest.fixture
def environment_of_this_test(
    outbox: runtime.Runtime, monkeypatch: pytest.MonkeyPatch
) -> runtime.Runtime:
    """The command's environment points at this test's servers: were a bad setting ever let
    through, the command would touch nothing but what this test owns."""
    settings = outbox.settings
    monkeypatch.setenv("OUTBOX_DATABASE_URL", settings.database_url.render_as_string(False))
    monkeypatch.setenv("OUTBOX_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("OUTBOX_STREAM_PREFIX", settings.stream_prefix)
    monkeypatch.setenv("OUTBOX_QUEUED_PREFIX", settings.queued_prefix)
    return outbox


@pytest.mark.parametrize("case", environment.CASES, ids=lambda case: case.id)
def test_an_invalid_setting_stops_an_outbox_command_with_one_line_naming_it(
    Session: sessionmaker[Session],
    environment_of_this_test: runtime.Runtime,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    case: environment.EnvCase,
) -> None:
    [run_id] = seed(Session, events=2)
    prefix = environment_of_this_test.settings.stream_prefix
    before = _written(Session, redis_client, prefix)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    runtime.reset()  # the command reads its settings afresh, as a new process does

    result = run_outbox("drain", str(run_id))

    assert (result.exit_code, result.stdout) == (1, "")
    _one_error_line(result, case.message)
    assert _written(Session, redis_client, prefix) == before


@pytest.mark.parametrize("args", VERBS, ids=" ".join)
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param(
            "OUTBOX_BATCH_SIZE",
            "0",
            "OUTBOX_BATCH_SIZE must be an integer from 1 to 100000, got '0'",
            id="publisher setting",
        ),
        pytest.param(
            "CELERY_VISIBILITY_TIMEOUT",
            "nan",
            "CELERY_VISIBILITY_TIMEOUT must be a number of seconds above 0 and at most 604800, "
            "got 'nan'",
            id="Celery setting",
        ),
    ],
)
def test_every_verb_checks_every_setting_before_it_does_anything(
    Session: sessionmaker[Session],
    environment_of_this_test: runtime.Runtime,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    [run_id] = seed(Session, events=2)
    prefix = environment_of_this_test.settings.stream_prefix
    before = _written(Session, redis_client, prefix)
    monkeypatch.setenv(variable, value)

    result = run_outbox(*(arg.format(run=run_id) for arg in args))

    assert (result.exit_code, result.stdout) == (1, ""), result.output[:500]
    _one_error_line(result, message)
    assert _written(Session, redis_client, prefix) == before
