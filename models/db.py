"""Engine and session setup from OUTBOX_DATABASE_URL, safe under Celery's prefork pool."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from models import embedded, errors

DATABASE_URL_ENV = "OUTBOX_DATABASE_URL"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/outbox"
# A drain or producer statement that runs longer than this is stuck, not slow.
STATEMENT_TIMEOUT_MS = 60_000

_lock = threading.Lock()
_engines: dict[str, Engine] = {}


def database_url(environ: dict[str, str] | None = None) -> URL:
    """Return the configured database URL, with the psycopg 3 driver filled in.

    Without OUTBOX_DATABASE_URL: ``DEFAULT_DATABASE_URL`` when a server answers on its port,
    else the embedded PostgreSQL's URL when one runs (see models.embedded)."""
    env = os.environ if environ is None else environ
    configured = env.get(DATABASE_URL_ENV)
    if configured:
        return normalize_url(configured)
    # Unset: the local server on the default port, else the embedded one (models.embedded),
    # decided once per process, so the many calls of get_engine() cost a dict look-up.
    return normalize_url(embedded.default_database_url(env))


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and make ``postgresql://`` mean the psycopg 3 driver."""
    # The messages never quote the URL: it may hold a password.
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise errors.ConfigError(
            f"{DATABASE_URL_ENV} is not a valid SQLAlchemy URL "
            "(postgresql+psycopg://user:password@host:5432/database)"
        ) from exc
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        raise errors.ConfigError(f"{DATABASE_URL_ENV} must have a port from 1 to 65535")
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg":
        raise errors.ConfigError(
            f"{DATABASE_URL_ENV} must use PostgreSQL with the psycopg 3 driver "
            f"(postgresql+psycopg://...), got driver {parsed.drivername!r}"
        )
    return parsed


def libpq_url(url: URL, database: str | None = None) -> str:
    """Return ``url`` (or another ``database`` on the same server) as a libpq URI for psycopg.

    The password is kept: the URI is for connecting, never for logging.
    """
    if database is not None:
        url = url.set(database=database)
    # libpq knows the scheme postgresql:// only, not SQLAlchemy's postgresql+psycopg://.
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _json_dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the project's JSON and timeout settings."""
    options = kwargs.pop("connect_args", {})
    options.setdefault("options", f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
    engine = create_engine(
        normalize_url(url),
        # No ping per checkout: it would cost a round trip per batch. A broken connection fails
        # the statement instead; SQLAlchemy replaces it and the task retries.
        pool_pre_ping=False,
        json_serializer=_json_dumps,
        connect_args=options,
        **kwargs,
    )
    if "application_name" not in options:
        event.listen(engine, "do_connect", _name_connection)
    return engine


# Who a connection belongs to, as PostgreSQL shows it (pg_stat_activity.application_name):
# "outbox <role> host=<host> pid=<pid>", so that a drainer attached to a database can be named
# and found (the test plugin's guard, tasks.testing.guard, does). The name is made for each new
# connection, so a prefork pool child, whose inherited pool models.db drops, reports its own pid.
APPLICATION_NAME_PREFIX = "outbox"
MAX_APPLICATION_NAME = 63  # PostgreSQL's NAMEDATALEN - 1: it cuts longer names silently
ROLES = ("worker", "beat", "cli", "app")
_role: str | None = None


def identify_as(role: str) -> None:
    """Name this process's role in its connections: worker, beat, cli or app (in-process)."""
    global _role
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {errors.preview(role)}")
    _role = role


def process_role() -> str:
    """This process's role: as identified, else ``cli`` under the ``outbox`` command, else
    ``app`` (a drain in an application's process, a script or a test)."""
    if _role is not None:
        return _role
    return "cli" if sys.argv and Path(sys.argv[0]).name == "outbox" else "app"


def host_label() -> str:
    """This machine's short host name, in the characters an application_name keeps."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname().split(".")[0])


def application_name(role: str | None = None, pid: int | None = None) -> str:
    """``outbox <role> host=<host> pid=<pid>`` for this process, the host cut to fit 63
    characters (never the pid)."""
    role = role or process_role()
    pid = os.getpid() if pid is None else pid
    fixed = len(f"{APPLICATION_NAME_PREFIX} {role} host= pid={pid}")
    host = host_label()[: max(0, MAX_APPLICATION_NAME - fixed)]
    return f"{APPLICATION_NAME_PREFIX} {role} host={host} pid={pid}"


def _name_connection(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    # A name given in the URL's query wins.
    cparams.setdefault("application_name", application_name())


def get_engine(url: str | URL | None = None) -> Engine:
    """Return this process's engine for ``url`` (default: the configured URL), built once."""
    key = (normalize_url(url) if url is not None else database_url()).render_as_string(
        hide_password=False
    )
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(key)
        return engine


def session_factory(url: str | URL | None = None) -> sessionmaker[Session]:
    """Return a session factory bound to this process's engine for ``url``."""
    return sessionmaker(get_engine(url), expire_on_commit=False)


def dispose_engines() -> None:
    """Close and forget this process's engines (for shutdown, and for tests)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def _forget_inherited_pools() -> None:
    # A forked child (a prefork worker process) must never use the parent's pooled sockets:
    # drop them without closing, so the parent's connections stay intact.
    global _lock
    _lock = threading.Lock()
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_pools)
