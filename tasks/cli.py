"""The ``outbox`` command: schema, producing, draining, inspecting, and a demo.

Every command talks to the servers named by the environment (see the README's configuration
table). Bad input exits with status 2, a failed operation with status 1, each with a message
that says what to do.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import click
import redis
import sqlalchemy.exc
from sqlalchemy import select

from models import Run, append_event, create_run, errors, migrate
from models.ids import parse_run_id
from tasks import api, drain, redis_sink, runtime, sql
from tasks.errors import PublishError
from tasks.runtime import Runtime


class OutboxGroup(click.Group):
    """Turns the project's and the servers' errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (errors.InvalidRunId, errors.InvalidPayload) as exc:
            raise click.UsageError(str(exc), ctx) from exc
        except errors.OutboxError as exc:
            raise click.ClickException(str(exc)) from exc
        except sqlalchemy.exc.ProgrammingError as exc:
            if "does not exist" in str(exc.orig):
                raise click.ClickException(
                    "the outbox tables do not exist in this database: run `outbox db upgrade`"
                ) from exc
            raise
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            url = runtime.current().settings.database_url.render_as_string(hide_password=True)
            raise click.ClickException(
                f"PostgreSQL at {url} failed: {str(exc.orig).strip()}\n"
                "Check that the server runs and OUTBOX_DATABASE_URL is right, "
                "then run `outbox db upgrade`."
            ) from exc
        except redis.RedisError as exc:
            raise click.ClickException(
                f"Redis failed: {exc}. Check that it runs and OUTBOX_REDIS_URL is right."
            ) from exc


def _run_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return parse_run_id(value)
    except errors.InvalidRunId as exc:
        raise click.BadParameter(str(exc)) from exc


def _ensure_run(current: Runtime, run_id: uuid.UUID) -> None:
    with current.session_factory() as session:
        if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
            raise errors.UnknownRun(f"no run with id {run_id}")


@click.group(cls=OutboxGroup)
def main() -> None:
    """Transactional outbox publisher: PostgreSQL outbox to Redis Streams."""


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create the database if it is missing, then apply every migration."""
    settings = runtime.current().settings
    url = settings.database_url.render_as_string(hide_password=True)
    if migrate.upgrade(settings.database_url):
        click.echo(f"created database {settings.database_url.database!r}")
    click.echo(f"schema up to date at {url}")


@main.command("create-run")
@click.argument("run_id", required=False, callback=_run_id)
def create_run_command(run_id: uuid.UUID | None) -> None:
    """Create a run (a new UUID unless RUN_ID is given) and print its id."""
    current = runtime.current()
    with current.session_factory() as session, session.begin():
        run = create_run(session, run_id)
    click.echo(str(run.id))


@main.command()
@click.argument("run_id", callback=_run_id)
@click.argument("event_type", metavar="TYPE")
@click.option("--payload", default="{}", show_default=True, help="The event's payload, as JSON.")
@click.option("--create", is_flag=True, help="Create the run first if it does not exist.")
def emit(run_id: uuid.UUID, event_type: str, payload: str, create: bool) -> None:
    """Append an event of TYPE to RUN_ID's outbox and print its seq."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from exc
    current = runtime.current()
    with current.session_factory() as session, session.begin():
        if create and session.get(Run, run_id) is None:
            create_run(session, run_id)
        event = append_event(session, run_id, event_type, value)
    click.echo(f"{run_id} seq {event.seq}")


@main.command("drain")
@click.argument("run_id", required=False, callback=_run_id)
@click.option("--all", "all_runs", is_flag=True, help="Drain every run with pending events.")
def drain_command(run_id: uuid.UUID | None, all_runs: bool) -> None:
    """Drain RUN_ID (or --all) now, in this process: no worker needed."""
    if (run_id is None) == (not all_runs):
        raise click.UsageError("give either a RUN_ID or --all")
    report: dict[str, Any]
    if run_id is not None:
        try:
            report = api.drain_outbox_for_run(run_id).as_dict()
        except PublishError as exc:
            raise click.ClickException(
                f"{exc} (the attempt is recorded; see `outbox status`)"
            ) from exc
        if report["status"] == drain.Status.MISSING:
            raise click.ClickException(f"no run with id {run_id}")
    else:
        report = api.drain_outbox_once().as_dict()
    click.echo(json.dumps(report))


@main.command()
@click.option("--limit", default=50, show_default=True, help="At most this many runs.")
def status(limit: int) -> None:
    """Show runs with pending events (count, oldest pending age) and stalled runs."""
    current = runtime.current()
    with current.session_factory() as session:
        rows = session.execute(sql.STATUS, {"limit": limit}).all()
    if not rows:
        click.echo("nothing pending")
        return
    now = dt.datetime.now(dt.UTC)
    click.echo(f"{'run':36}  {'status':8}  {'pending':>8}  {'oldest':>9}  attempts  last error")
    for row in rows:
        age = f"{(now - row.oldest_pending).total_seconds():.1f}s" if row.oldest_pending else "-"
        error = (row.last_error or "").splitlines()[0][:60] if row.last_error else ""
        click.echo(
            f"{row.run_id!s:36}  {row.status:8}  {row.pending:>8}  {age:>9}  "
            f"{row.attempts:>8}  {error}"
        )


@main.command()
@click.argument("run_ids", nargs=-1)
@click.option("--all", "all_runs", is_flag=True, help="Resume every stalled run.")
def resume(run_ids: tuple[str, ...], all_runs: bool) -> None:
    """Put stalled runs back in service (their attempts start again from zero)."""
    if bool(run_ids) == all_runs:
        raise click.UsageError("give RUN_IDs or --all")
    resumed = api.resume(None if all_runs else list(run_ids))
    click.echo(f"resumed {len(resumed)} run(s)")


@main.command()
@click.argument("run_id", callback=_run_id)
@click.option("--from", "from_seq", default=1, show_default=True, help="First seq to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new entries.")
@click.option("--timeout", type=float, help="With --follow: stop after this many seconds.")
def tail(run_id: uuid.UUID, from_seq: int, follow: bool, timeout: float | None) -> None:
    """Print RUN_ID's stream entries: seq, type, payload."""
    current = runtime.current()
    _ensure_run(current, run_id)
    prefix = current.settings.stream_prefix
    after = max(from_seq, 1) - 1
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        entries = redis_sink.read_stream(current.redis, prefix, run_id, after=after)
        if not entries and follow:
            if deadline is not None and time.monotonic() >= deadline:
                return
            entries = redis_sink.wait_stream(
                current.redis, prefix, run_id, after=after, block_ms=1000
            )
        for entry in entries:
            click.echo(f"{entry.seq}\t{entry.type}\t{entry.payload}")
            after = entry.seq
        if not entries and not follow:
            return


@main.command()
@click.option("--runs", default=3, show_default=True, help="How many runs to create.")
@click.option("--events", default=5, show_default=True, help="Events per run.")
def demo(runs: int, events: int) -> None:
    """Create runs, append events, drain them, and print what reached the streams."""
    current = runtime.current()
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
            published += api.drain_outbox_for_run(run_id).published
    click.echo(f"published {published} events to {runs} streams")
    for run_id in run_ids:
        key = redis_sink.stream_key(settings.stream_prefix, run_id)
        click.echo(f"\n{key}")
        for entry in redis_sink.read_stream(current.redis, settings.stream_prefix, run_id):
            click.echo(f"  {entry.seq}-0  {entry.type}  {entry.payload}")
    click.echo(f"\nfollow a run with: outbox tail {run_ids[0]} --follow")
