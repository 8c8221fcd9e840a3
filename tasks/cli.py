"""The ``outbox`` command: schema, producing, draining, inspecting, and a demo.

Every command talks to the servers named by the environment (see docs/configuration.md).
Exit status: 0 on success, 1 when an operation failed (a drain that could not publish
or parked a run included), 2 on bad input. A failure is one line on stderr that says what to
do, never a traceback: ``OutboxGroup`` turns every exception into that line in one place,
``_failure``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import click

# The drivers, SQLAlchemy, Celery and the rest of the project are imported by the verbs that
# need them, not here: `outbox --help`, `--version` and `VERB --help` import click only.
if TYPE_CHECKING:
    from tasks import pg
    from tasks import replay as stream_replay
    from tasks import verify as stream_verify
    from tasks.drain import DrainResult
    from tasks.redis_sink import RedisStreamReader
    from tasks.runtime import Runtime

FAILED, BAD_INPUT = 1, 2  # exit statuses (0 is success)
MAX_MESSAGE_CHARS = 500  # an error line never echoes a huge input or server answer
MAX_IDS_SHOWN = 3  # run ids named in one message
MAX_BIGINT = 2**63 - 1  # PostgreSQL's largest bigint: no seq or count is larger
DISTRIBUTION = "outbox-publisher"  # the package whose version `outbox --version` prints
# Defaults shown in the verbs' help, kept here so that --help imports nothing; a unit test
# checks them against the modules they come from (tasks.purge, tasks.metrics).
PURGE_BATCH_SIZE, PURGE_MAX_BATCH_SIZE = 1000, 5000
METRICS_DEFAULT_PORT = 9808
SERVICES_ADVICE = "`outbox services up` starts embedded ones"
# psycopg's hint lines, which repeat what the message around them says
PSYCOPG_HINTS = ("Is the server running",)


class BadInput(click.ClickException):
    """Bad input: exit status 2, one line, without the usage text."""

    exit_code = BAD_INPUT


def _line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line (runs of whitespace become one space), cut to ``limit``."""
    line = " ".join(text.split())
    return line if len(line) <= limit else f"{line[: limit - 3]}..."


def _sentence(text: str) -> str:
    """``text`` ending as a sentence: a full stop added unless it ends with one already."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else f"{text}."


def _clause(text: str) -> str:
    """``text`` without its closing full stop or colon, to be continued or closed by us."""
    return text.rstrip().rstrip(".:;").rstrip()


def _usage_line(exc: click.UsageError, path: str | None = None) -> str:
    """A usage error as one sentence and where to read more, for one line on stderr: the
    help of the command it names, else of ``path`` (for an error click raised without one)."""
    path = exc.ctx.command_path if exc.ctx is not None else path
    hint = f" See '{path} --help'." if path else ""
    return _sentence(exc.format_message()) + hint


def _redis_url() -> str:
    """OUTBOX_REDIS_URL with its password hidden."""
    from tasks import runtime

    parts = urllib.parse.urlsplit(runtime.current().settings.redis_url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:***@{host}" if at and ":" in user else parts.netloc
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(k, "***" if k.lower() == "password" else v) for k, v in query]
    return parts._replace(netloc=netloc, query=urllib.parse.urlencode(hidden, safe="*")).geturl()


def _database_url() -> str:
    from tasks import runtime

    return runtime.current().settings.database_url.render_as_string(hide_password=True)


def _sink_down(detail: str, *, unreachable: bool = False) -> tuple[str, int]:
    """The line for a sink that does not take entries: what it said, and what to do."""
    state = "unreachable" if unreachable else "unavailable"
    if unreachable or detail.startswith(("ConnectionError", "TimeoutError")):
        advice = f"Start it, or point OUTBOX_REDIS_URL at one that runs ({SERVICES_ADVICE})."
    elif detail.startswith("AuthenticationError") or "AUTH" in detail or "WRONGPASS" in detail:
        advice = "Check the user name and password in OUTBOX_REDIS_URL."
    else:  # up, but out of memory, read-only or loading: drains retry
        advice = "Drains retry until it takes entries again; check the server's state."
    return f"Redis at {_redis_url()} is {state}: {_sentence(detail)} {advice}", FAILED


def _driver_error(exc: BaseException) -> BaseException | None:
    """The psycopg error behind ``exc`` (its cause, or a SQLAlchemy error's ``orig``), if any.

    Only looked for when psycopg was imported: an error of a module never loaded cannot occur.
    """
    if "psycopg" not in sys.modules:
        return None
    import psycopg

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.Error):
            return current
        orig = getattr(current, "orig", None)  # sqlalchemy.exc.DBAPIError
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def _psycopg_detail(error: BaseException) -> str:
    """What psycopg said, on one line, without its hint lines or the "connection failed:"
    every connection error starts with; no closing full stop (the caller ends the sentence)."""
    lines = [" ".join(line.split()) for line in str(error).splitlines()]
    kept = [line for line in lines if line and not line.startswith(PSYCOPG_HINTS)]
    text = " ".join(kept).removeprefix("connection failed: ") or type(error).__name__
    return _clause(text.replace("FATAL: ", ""))


def _database_failure(exc: BaseException) -> tuple[str, int] | None:
    """The line for a database error by its cause, or None if it is not one of these: the
    server unreachable, the credentials refused, the database or its schema missing."""
    error = _driver_error(exc)
    if error is None:
        return None
    import psycopg.errors

    if isinstance(error, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
        return "the outbox schema here is missing or out of date: run `outbox db upgrade`", FAILED
    if not isinstance(error, psycopg.OperationalError) or error.sqlstate is not None:
        return None  # the server's answer to a statement, not to connecting
    detail, url = _psycopg_detail(error), _database_url()
    if "does not exist" in detail and "database " in detail:
        message = (
            f"PostgreSQL at {url} has no such database ({detail}): run `outbox db upgrade`, "
            "which creates it and its schema"
        )
        return message, FAILED
    if "authentication" in detail or "role " in detail or "pg_hba.conf" in detail:
        message = (
            f"PostgreSQL at {url} refused the credentials ({detail}): check the user name and "
            "password in OUTBOX_DATABASE_URL"
        )
        return message, FAILED
    if "FATAL" in str(error):  # answering, but refusing connections (starting up, full)
        return f"PostgreSQL at {url} refused the connection: {detail}", FAILED
    message = (
        f"PostgreSQL at {url} is unreachable: {detail}. Start it, or point "
        f"OUTBOX_DATABASE_URL at one that runs ({SERVICES_ADVICE})."
    )
    return message, FAILED


def _redis_failure(exc: BaseException) -> tuple[str, int] | None:
    """The line for a redis-py error, or None if ``exc`` is not one."""
    if "redis" not in sys.modules:
        return None
    import redis

    from tasks import redis_sink

    if not isinstance(exc, (redis.RedisError, redis.exceptions.RedisClusterException)):
        return None
    if isinstance(exc, redis.RedisError) and redis_sink.is_outage(exc):
        unreachable = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
        kind = "" if unreachable else f"{type(exc).__name__}: "
        return _sink_down(f"{kind}{exc}", unreachable=unreachable)
    return f"Redis at {_redis_url()} refused a command: {exc}", FAILED


def _failure(exc: Exception) -> tuple[str, int]:
    """The message and exit status that stand for ``exc``, an error inside a verb.

    The project's and the drivers' error types are tested only when their module is loaded.
    """
    if isinstance(exc, click.UsageError):
        return _usage_line(exc), BAD_INPUT
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if "models.errors" in sys.modules:
        from models import errors

        if isinstance(exc, (errors.InvalidRunId, errors.InvalidPayload)):
            return str(exc), BAD_INPUT
    if "tasks.errors" in sys.modules:
        from tasks.errors import SinkUnavailable

        if isinstance(exc, SinkUnavailable):
            return _sink_down(str(exc).removeprefix("Redis unavailable: "))
    found = _redis_failure(exc) or _database_failure(exc)
    if found is not None:
        return found
    if "tasks.errors" in sys.modules:
        from tasks.errors import StoreUnavailable

        if isinstance(exc, StoreUnavailable):  # without a driver error behind it
            detail = _clause(str(exc).removeprefix("PostgreSQL unavailable: "))
            return f"PostgreSQL at {_database_url()} is unavailable: {detail}", FAILED
    if "sqlalchemy" in sys.modules:
        import sqlalchemy.exc

        if isinstance(exc, sqlalchemy.exc.DBAPIError):
            return f"PostgreSQL refused a statement: {exc.orig}", FAILED
    if "alembic" in sys.modules:
        import alembic.util

        if isinstance(exc, alembic.util.CommandError):
            return f"migrating the schema failed: {exc}", FAILED
    if "models.errors" in sys.modules:
        from models import errors

        if isinstance(exc, errors.OutboxError):  # UnknownRun, RunExists, PublishError, ...
            return str(exc), FAILED
    return f"unexpected {type(exc).__name__}: {exc} (a bug in outbox: please report it)", FAILED


# Verbs defined in other modules, loaded only when one is run: (module, attribute, the short
# help `outbox --help` shows, which a unit test checks against the command's own).
LAZY_COMMANDS = {
    "services": (
        "tasks.services_cli",
        "services",
        "Embedded PostgreSQL and Valkey for development, kept in one state folder.",
    ),
}


class OutboxGroup(click.Group):
    """Runs a verb; whatever goes wrong inside it ends as one line and an exit status."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        """The group's own options read; a usage error there is one line too (click's own
        would be three: usage, a hint, the error)."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `outbox` alone: the help
        except click.UsageError as exc:
            path = f"{parent.command_path} {info_name}" if parent is not None else info_name
            raise BadInput(_line(_usage_line(exc, path or self.name))) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, click.exceptions.Exit, click.Abort):
            raise  # help asked for, an exit, Ctrl-C: click's own handling
        except (BrokenPipeError, EOFError):
            raise  # `outbox tail ... | head`, end of input: click's own handling too
        except click.UsageError as exc:  # reading the verb's arguments, or the verb itself
            verb = ctx.invoked_subcommand
            path = f"{ctx.command_path} {verb}" if verb else ctx.command_path
            raise BadInput(_line(_usage_line(exc, path))) from exc
        except Exception as exc:
            message, code = _failure(exc)
            raise (BadInput if code == BAD_INPUT else click.ClickException)(_line(message)) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name in LAZY_COMMANDS if _lazy_available(name)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS and _lazy_available(cmd_name):
            module, attribute, _help = LAZY_COMMANDS[cmd_name]
            loaded = getattr(importlib.import_module(module), attribute)
            if isinstance(loaded, click.Command):
                return loaded
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The verbs and their short help, without loading the lazy ones."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows: list[tuple[str, str]] = []
        for name in names:
            if name in LAZY_COMMANDS and name not in self.commands:
                stand_in = click.Command(name, help=LAZY_COMMANDS[name][2])  # loads nothing
                rows.append((name, stand_in.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _lazy_available(name: str) -> bool:
    """Whether the module of the lazy verb ``name`` is installed (a cheap lookup)."""
    return importlib.util.find_spec(LAZY_COMMANDS[name][0]) is not None


def _current() -> Runtime:
    """This process's runtime, built from the environment on first use, every setting
    checked first: a bad one is one line naming its variable, before anything runs."""
    from models import errors
    from tasks import runtime
    from tasks.settings import check_environment

    check_environment()
    try:
        return runtime.current()
    except ValueError as exc:  # what redis-py says of a query it cannot read
        raise errors.ConfigError(f"OUTBOX_REDIS_URL is not a valid Redis URL: {exc}") from exc


def _run_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    from models import errors
    from models.ids import parse_run_id

    try:
        return parse_run_id(value)
    except errors.InvalidRunId as exc:
        raise click.BadParameter(str(exc)) from exc


def _run_ids(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> tuple[uuid.UUID, ...]:
    ids = (_run_id(ctx, param, value) for value in values)
    return tuple(dict.fromkeys(run_id for run_id in ids if run_id is not None))


def _statuses(current: Runtime, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each run's outbox status; UnknownRun naming (a few of) the runs that do not exist."""
    from sqlalchemy import select

    from models import RunOutbox, errors

    query = select(RunOutbox.run_id, RunOutbox.status).where(RunOutbox.run_id.in_(run_ids))
    with current.session_factory() as session:
        found: dict[uuid.UUID, str] = {row.run_id: row.status for row in session.execute(query)}
    unknown = [str(run_id) for run_id in run_ids if run_id not in found]
    if len(unknown) == 1:
        raise errors.UnknownRun(f"no run with id {unknown[0]}")
    if unknown:
        shown = ", ".join(unknown[:MAX_IDS_SHOWN])
        more = len(unknown) - MAX_IDS_SHOWN
        raise errors.UnknownRun(
            f"no runs with ids {shown}" + (f" and {more} more" if more > 0 else "")
        )
    return found


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "(not installed)"
    click.echo(f"{DISTRIBUTION} {version}")
    ctx.exit()


@click.group(
    cls=OutboxGroup, name="outbox", context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--version",
    "-V",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Print the version and exit.",
)
def main() -> None:
    """Transactional outbox publisher: PostgreSQL outbox to Redis Streams."""


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create the database if it is missing, then apply every migration."""
    from models import migrate

    settings = _current().settings
    if migrate.upgrade(settings.database_url):
        click.echo(f"created database {settings.database_url.database!r}")
    click.echo(f"schema up to date at {_database_url()}")


@main.command("create-run")
@click.argument("run_id", required=False, callback=_run_id)
def create_run_command(run_id: uuid.UUID | None) -> None:
    """Create a run (a new UUID unless RUN_ID is given) and print its id."""
    from models import create_run

    current = _current()
    with current.session_factory() as session, session.begin():
        run = create_run(session, run_id)
    click.echo(str(run.id))


def _payload(text: str | None, file: IO[bytes] | None) -> object:
    """The payload given as --payload TEXT or --payload-file PATH (default ``{}``), parsed."""
    if text is not None and file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    option = "'--payload-file'" if file is not None else "'--payload'"
    try:
        if file is not None:
            text = file.read().decode("utf-8")
        return json.loads("{}" if text is None else text)
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", param_hint=option
        ) from exc
    except RecursionError as exc:
        raise click.BadParameter("JSON nested too deeply to read", param_hint=option) from exc
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=option) from exc
    except OSError as exc:
        raise click.BadParameter(f"cannot read it: {exc.strerror}", param_hint=option) from exc


@main.command()
@click.argument("run_id", callback=_run_id)
@click.argument("event_type", metavar="TYPE")
@click.option("--payload", metavar="JSON", help="The event's payload (default: {}).")
@click.option(
    "--payload-file",
    type=click.File("rb"),
    metavar="PATH",
    help="Read the payload from this file (- for standard input) instead.",
)
@click.option("--create", is_flag=True, help="Create the run first if it does not exist.")
def emit(
    run_id: uuid.UUID,
    event_type: str,
    payload: str | None,
    payload_file: IO[bytes] | None,
    create: bool,
) -> None:
    """Append an event of TYPE to RUN_ID's outbox and print its seq."""
    from models import Run, append_event, create_run

    value = _payload(payload, payload_file)
    current = _current()
    with current.session_factory() as session, session.begin():
        if create and session.get(Run, run_id) is None:
            create_run(session, run_id)
        event = append_event(session, run_id, event_type, value)
    click.echo(f"{run_id} seq {event.seq}")


def _parked(result: DrainResult) -> str:
    why = f": {result.error}" if result.error else "; see `outbox status` for why"
    return (
        f"run {result.run_id} is parked (stalled){why}. "
        f"Fix the cause, then run `outbox resume {result.run_id}`."
    )


@main.command("drain")
@click.argument("run_id", required=False, callback=_run_id)
@click.option("--all", "all_runs", is_flag=True, help="Drain every run with pending events.")
def drain_command(run_id: uuid.UUID | None, all_runs: bool) -> None:
    """Drain RUN_ID (or --all) now, in this process: no worker needed.

    Prints the result as JSON; exits with 1 if a run could not be published or was parked.
    """
    if run_id is not None and all_runs:
        raise click.UsageError("give either a RUN_ID or --all, not both")
    if run_id is None and not all_runs:
        raise click.UsageError("give either a RUN_ID or --all")
    from models import errors
    from tasks import api
    from tasks.drain import Status
    from tasks.errors import PublishError, SinkUnavailable

    _current()  # settings first: a malformed one is reported before anything runs
    if run_id is None:
        passed = api.drain_outbox_once()
        click.echo(json.dumps(passed.as_dict()))
        if passed.outage is not None:
            raise SinkUnavailable(passed.outage)
        if passed.failed:
            raise click.ClickException(
                f"{passed.failed} run(s) could not be published; see `outbox status` for why"
            )
        return
    try:
        result = api.drain_outbox_for_run(run_id)
    except PublishError as exc:
        message = f"the sink refused {exc}; the attempt is recorded (see `outbox status`)"
        raise click.ClickException(message) from exc
    if result.status is Status.MISSING:
        raise errors.UnknownRun(f"no run with id {run_id}")
    click.echo(json.dumps(result.as_dict()))
    if result.status is Status.STALLED:
        raise click.ClickException(_parked(result))


# Every pending event and stalled run, not only the runs `--limit` shows.
PENDING_SUMMARY = """
    SELECT count(DISTINCT run_id) AS runs, count(*) AS events, min(created_at) AS oldest,
           (SELECT count(*) FROM run_outbox WHERE status = 'stalled') AS stalled
    FROM run_events
    WHERE published_at IS NULL
"""


def _age(now: dt.datetime, since: dt.datetime) -> str:
    return f"{max((now - since).total_seconds(), 0.0):.1f}s"


def _sink_state(current: Runtime) -> tuple[str, tuple[str, int] | None]:
    """The sink's state line, from a PING sent now, and the error line if it did not answer."""
    import redis

    try:
        current.redis.ping()
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        failure = _redis_failure(exc) or (str(exc), FAILED)
        return f"sink unreachable: {_redis_url()}: {_line(str(exc), 200)}", failure
    return f"sink up: {_redis_url()}", None


def _pending_line(summary: Any, now: dt.datetime) -> str:
    stalled = f"; {summary.stalled} stalled" if summary.stalled else ""
    if not summary.runs:
        return f"nothing pending{stalled}"
    runs = "1 run" if summary.runs == 1 else f"{summary.runs} runs"
    events = "1 event" if summary.events == 1 else f"{summary.events} events"
    return f"{runs} pending ({events}), oldest event {_age(now, summary.oldest)} old{stalled}"


@main.command()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many runs.",
)
def status(limit: int) -> None:
    """Show the sink's state, what is pending, and the pending and stalled runs.

    First the sink's state from a PING sent now (and the outage the workers recorded, if
    any), then a summary (runs and events pending, the oldest event's age), then the runs with
    pending events (count, oldest pending age) and the stalled runs, up to --limit.

    Exits with 1 when the sink does not answer (the report is printed all the same).
    """
    from sqlalchemy import text

    from tasks import sql

    current = _current()
    sink_line, sink_failure = _sink_state(current)
    health = current.store.sink_health()
    with current.session_factory() as session:
        summary = session.execute(text(PENDING_SUMMARY)).one()
        rows = session.execute(sql.STATUS, {"limit": min(limit, MAX_BIGINT)}).all()
    now = dt.datetime.now(dt.UTC)
    click.echo(sink_line)
    if health.down_since is not None:
        since = health.down_since.astimezone(dt.UTC).isoformat(timespec="seconds")
        click.echo(f"sink unavailable since {since}: {_line(health.last_error or '', 200)}")
    click.echo(_pending_line(summary, now))
    if rows:
        click.echo(f"{'run':36}  {'status':8}  {'pending':>8}  {'oldest':>9}  attempts  last error")
    for row in rows:
        age = _age(now, row.oldest_pending) if row.oldest_pending else "-"
        error = (row.last_error or "").splitlines()[0][:60] if row.last_error else ""
        click.echo(
            f"{row.run_id!s:36}  {row.status:8}  {row.pending:>8}  {age:>9}  "
            f"{row.attempts:>8}  {error}"
        )
    if sink_failure is not None:
        raise click.ClickException(sink_failure[0])


@main.command()
@click.argument("run_ids", nargs=-1, callback=_run_ids)
@click.option("--all", "all_runs", is_flag=True, help="Resume every stalled run.")
def resume(run_ids: tuple[uuid.UUID, ...], all_runs: bool) -> None:
    """Put stalled runs back in service (their attempts start again from zero)."""
    if run_ids and all_runs:
        raise click.UsageError("give RUN_IDs or --all, not both")
    if not run_ids and not all_runs:
        raise click.UsageError("give RUN_IDs or --all")
    from tasks import api

    if all_runs:
        _current()  # settings first, as for every verb
        click.echo(f"resumed {len(api.resume(None))} run(s)")
        return
    before = _statuses(_current(), run_ids)
    resumed = [run_id for run_id in api.resume(run_ids) if before[run_id] == "stalled"]
    active = sum(1 for status in before.values() if status != "stalled")
    click.echo(f"resumed {len(resumed)} run(s)" + (f"; {active} active already" if active else ""))


def _seconds(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


def _printable(text: str) -> str:
    """``text`` with tabs, newlines and other unprintable characters escaped as JSON does,
    so that every entry stays one line of three fields."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


@main.command()
@click.argument("run_id", callback=_run_id)
@click.option(
    "--from",
    "from_seq",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="First seq to show.",
)
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new entries.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    callback=_seconds,
    help="With --follow: stop after this many seconds.",
)
def tail(run_id: uuid.UUID, from_seq: int, follow: bool, timeout: float | None) -> None:
    """Print RUN_ID's stream entries: seq, type, payload."""
    if timeout is not None and not follow:
        raise click.UsageError("--timeout needs --follow")
    from tasks import redis_sink

    current = _current()
    _statuses(current, [run_id])  # an unknown run is an error, not an empty stream
    prefix = current.settings.stream_prefix
    after = min(from_seq, MAX_BIGINT) - 1
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        entries = redis_sink.read_stream(current.redis, prefix, run_id, after=after)
        if not entries:
            if not follow:
                return
            wait_ms = 1000 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                return
            entries = redis_sink.wait_stream(
                current.redis, prefix, run_id, after=after, block_ms=min(wait_ms, 1000)
            )
        for entry in entries:
            click.echo(f"{entry.seq}\t{_printable(entry.type)}\t{_printable(entry.payload)}")
            after = entry.seq


PURGE_ROUND = 100  # batches between two progress lines of `outbox purge`


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from tasks import purge as retention

    try:
        return retention.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@main.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_duration,
    help="Delete events published longer ago than this: seconds, or a number with s, m, h "
    "or d, e.g. 12h or 7d (default: OUTBOX_RETENTION, 7d).",
)
@click.option("--dry-run", is_flag=True, help="Count the events that would go; delete nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, PURGE_MAX_BATCH_SIZE),
    default=PURGE_BATCH_SIZE,
    show_default=True,
    help="Events deleted per transaction.",
)
def purge(older_than: float | None, dry_run: bool, batch_size: int) -> None:
    """Delete published events older than OUTBOX_RETENTION (or --older-than), in batches.

    Never an unpublished event, and never a run's counter or cursor: its next event still
    gets the next seq. Streams are not touched.
    """
    from tasks import pg
    from tasks import purge as retention
    from tasks.errors import StoreUnavailable

    current = _current()
    store = pg.SqlPurgeStore(current.session_factory)
    cutoff = store.cutoff(current.settings.retention if older_than is None else older_than)
    before = cutoff.astimezone(dt.UTC).isoformat(timespec="seconds")
    if dry_run:
        count = store.count(cutoff)
        click.echo(f"would delete {count} events published before {before} (dry run: none deleted)")
        return
    deleted = batches = 0
    while True:  # bounded rounds of batches, with a progress line between two rounds
        result = retention.purge(store, cutoff, batch_size=batch_size, max_batches=PURGE_ROUND)
        deleted, batches = deleted + result.deleted, batches + result.batches
        if result.error is not None:
            raise StoreUnavailable(f"{result.error} (after deleting {deleted} events)")
        if not result.more:
            break
        click.echo(f"deleted {deleted} events so far, in {batches} batches...", err=True)
    click.echo(f"deleted {deleted} events published before {before}, in {batches} batches")


def _stream_checks(current: Runtime) -> tuple[pg.SqlLedger, RedisStreamReader]:
    """The database and stream sides that verify and replay compare."""
    from tasks import pg
    from tasks.redis_sink import RedisStreamReader

    reader = RedisStreamReader(current.redis, current.settings.stream_prefix)
    return pg.SqlLedger(current.session_factory), reader


def _progress_shown() -> bool:
    """Whether `verify --all` draws its progress bar: only for a person at a terminal."""
    return sys.stderr.isatty()


def _verify_every_run(ledger: pg.SqlLedger, reader: RedisStreamReader) -> stream_verify.Summary:
    """Verify every run, printing each wrong one at once, with a progress bar on stderr."""
    from tasks import verify as stream_verify

    shown = _progress_shown()
    bar = click.progressbar(
        length=ledger.count_runs() if shown else 0,
        label="verifying runs",
        hidden=not shown,
        show_pos=True,
        file=sys.stderr,
    )

    def on_run(report: stream_verify.RunReport) -> None:
        if report.wrong:
            if shown:
                click.echo("\r\033[K", err=True, nl=False)  # the bar's line, cleared
            click.echo(report.line())
        bar.update(1)

    with bar:
        return stream_verify.verify_all(ledger, reader, on_run=on_run)


@main.command("verify")
@click.argument("run_id", required=False, callback=_run_id)
@click.option("--all", "all_runs", is_flag=True, help="Verify every run.")
def verify_command(run_id: uuid.UUID | None, all_runs: bool) -> None:
    """Compare RUN_ID's stream (or every run's) with the events the database published.

    Prints a line per run whose stream is wrong (missing, differing or extra entries, as seq
    ranges) and a summary line; exits with 1 if a run is wrong.
    """
    if run_id is not None and all_runs:
        raise click.UsageError("give either a RUN_ID or --all, not both")
    if run_id is None and not all_runs:
        raise click.UsageError("give either a RUN_ID or --all")
    from tasks import verify as stream_verify

    ledger, reader = _stream_checks(_current())
    if run_id is None:
        summary = _verify_every_run(ledger, reader)
    else:
        summary = stream_verify.verify_one(ledger, reader, run_id)
        for report in summary.problems:
            click.echo(report.line())
    click.echo(summary.line())
    if not summary.ok:
        which = "run's stream does" if summary.wrong_runs == 1 else "runs' streams do"
        raise click.ClickException(
            f"{summary.wrong_runs} {which} not match the database; "
            "`outbox replay RUN_ID` puts missing entries back"
        )


@main.command("replay")
@click.argument("run_id", required=False, callback=_run_id)
@click.option(
    "--from-seq",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="First seq to put back.",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Delete the stream and publish every published event again, from the first.",
)
@click.option(
    "--all-lost", is_flag=True, help="Replay (or rebuild) every run whose stream misses events."
)
@click.pass_context
def replay_command(
    ctx: click.Context, run_id: uuid.UUID | None, from_seq: int, rebuild: bool, all_lost: bool
) -> None:
    """Put RUN_ID's published events back into its stream, from --from-seq on, exactly once.

    Only events still in the database come back (see `outbox purge`). Exits with 1 if some
    could not be restored (a conflict, or entries below the stream's last id). --rebuild
    deletes the stream and writes it anew (its consumers read it again from the start).
    --all-lost, without RUN_ID, replays (with --rebuild: rebuilds) every run whose stream
    misses published events.
    """
    if run_id is not None and all_lost:
        raise click.UsageError("give either a RUN_ID or --all-lost, not both")
    if run_id is None and not all_lost:  # as click says it of a required argument
        run_id_param = next(param for param in ctx.command.params if param.name == "run_id")
        raise click.MissingParameter(ctx=ctx, param=run_id_param, param_hint="'RUN_ID'")
    from_given = ctx.get_parameter_source("from_seq") is not click.core.ParameterSource.DEFAULT
    if from_given and (rebuild or all_lost):
        raise click.UsageError("--from-seq goes with a plain replay of one run only")
    from tasks import redis_sink
    from tasks import replay as stream_replay

    current = _current()
    ledger, reader = _stream_checks(current)
    prefix = current.settings.stream_prefix

    def erase(run: uuid.UUID) -> None:
        current.redis.delete(redis_sink.stream_key(prefix, run))

    if run_id is None:  # --all-lost
        summary = stream_replay.replay_lost(
            ledger, reader, current.sink, erase, rebuild=rebuild, on_run=_echo_replayed
        )
        click.echo(summary.line())
        if not summary.ok:
            raise click.ClickException("some streams are still wrong: see the lines above")
        return
    if rebuild:
        result = stream_replay.rebuild_run(ledger, reader, current.sink, erase, run_id)
    else:
        first = min(from_seq, MAX_BIGINT)
        result = stream_replay.replay_run(ledger, reader, current.sink, run_id, from_seq=first)
    click.echo(result.line())
    problem = result.problem()
    if problem is not None:
        raise click.ClickException(problem)


def _echo_replayed(result: stream_replay.ReplayResult) -> None:
    """Print a replayed run's line, and on stderr why it is incomplete, if it is."""
    click.echo(result.line())
    problem = result.problem()
    if problem is not None:
        click.echo(f"  {_line(problem)}", err=True)


@main.command("metrics")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=METRICS_DEFAULT_PORT,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface).",
)
def metrics_command(port: int, host: str) -> None:
    """Serve Prometheus metrics over HTTP, at /metrics, until Ctrl-C or SIGTERM.

    The workers' counts come from PROMETHEUS_MULTIPROC_DIR, the directory they write them to:
    run this on their machine, with the same variable. The database's gauges (pending events,
    lag, stalled runs, sink outage) are read at each scrape.
    """
    from tasks import metrics
    from tasks.settings import metrics_dir

    current = _current()
    directory = metrics_dir(os.environ)
    registry = metrics.scrape_registry(metrics.SqlBacklog(current.session_factory), directory)
    try:
        server = metrics.MetricsServer(registry, host, port)
    except OSError as exc:  # the port is taken, the host unknown or not ours
        problem = exc.strerror or str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port}: {problem}") from exc
    if directory is None:
        click.echo(
            "PROMETHEUS_MULTIPROC_DIR is not set: serving the database's gauges only, "
            "not the workers' counts",
            err=True,
        )
    click.echo(f"serving metrics at http://{host}:{port}/metrics (Ctrl-C or SIGTERM stops)")
    server.serve_until_stopped()
    click.echo("stopped")


@main.command()
@click.option(
    "--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Runs to create."
)
@click.option(
    "--events", type=click.IntRange(min=1), default=5, show_default=True, help="Events per run."
)
def demo(runs: int, events: int) -> None:
    """Create runs, append events, drain them, and print what reached the streams.

    With no OUTBOX_DATABASE_URL / OUTBOX_REDIS_URL set and no server on the default ports, it
    starts the embedded ones (see `outbox services`).
    """
    _allow_embedded_servers()  # before the settings are read: they decide the URLs
    from models import append_event, create_run, migrate
    from tasks import api, redis_sink
    from tasks.drain import Status

    current = _current()
    current.redis.ping()  # the sink first: nothing is written while it is down
    settings = current.settings
    if migrate.upgrade(settings.database_url):
        click.echo(f"created database {settings.database_url.database!r}")
    run_ids: list[uuid.UUID] = []
    with click.progressbar(range(runs), label="appending events") as bar:
        for index in bar:
            with current.session_factory() as session, session.begin():
                run = create_run(session)
                for n in range(1, events + 1):
                    append_event(session, run.id, "demo.step", {"run": index + 1, "step": n})
            run_ids.append(run.id)
    published = 0
    with click.progressbar(run_ids, label="draining       ") as bar:
        for run_id in bar:
            result = api.drain_outbox_for_run(run_id)
            published += result.published
            while result.status is Status.MORE:  # more events than one drain takes
                result = api.drain_outbox_for_run(run_id)
                published += result.published
    click.echo(f"published {published} events to {runs} streams")
    for run_id in run_ids:
        key = redis_sink.stream_key(settings.stream_prefix, run_id)
        click.echo(f"\n{key}")
        for entry in redis_sink.read_stream(current.redis, settings.stream_prefix, run_id):
            click.echo(f"  {entry.seq}-0  {entry.type}  {entry.payload}")
    click.echo(f"\nfollow a run with: outbox tail {run_ids[0]} --follow")


def _allow_embedded_servers() -> None:
    """Let this process start the embedded servers it needs (models.embedded), where that
    module is installed."""
    if importlib.util.find_spec("models.embedded") is not None:
        importlib.import_module("models.embedded").allow_start()
