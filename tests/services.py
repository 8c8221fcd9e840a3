"""Where the tests' PostgreSQL and Redis come from, and per-test databases and prefixes.

Order: OUTBOX_TEST_DATABASE_URL / OUTBOX_TEST_REDIS_URL when set; else servers on the default
local ports when they answer; else testcontainers (Docker); else the run stops with one message
saying how to provide them. A missing service never skips a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import uuid
from collections.abc import Iterator

import psycopg
import redis
from psycopg import sql
from sqlalchemy import URL, make_url

from models.db import libpq_url, normalize_url
from models.migrate import upgrade

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

HOW_TO_PROVIDE = (
    "The tests need PostgreSQL and Redis. Start them on 127.0.0.1:5432 (role postgres, trust "
    "auth) and 127.0.0.1:6379 (e.g. `docker compose up -d`), or set OUTBOX_TEST_DATABASE_URL "
    "(a role that may CREATE DATABASE) and OUTBOX_TEST_REDIS_URL, or make Docker available "
    "for testcontainers."
)


class ServicesUnavailable(RuntimeError):
    """Neither configured, local nor containerised services could be had."""


@dataclasses.dataclass(frozen=True)
class Services:
    """The servers the suite uses: an admin database URL and a Redis URL."""

    admin_url: URL
    redis_url: str


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def provide() -> Iterator[Services]:
    """Yield services by the order in the module docstring."""
    pg = os.environ.get("OUTBOX_TEST_DATABASE_URL")
    rd = os.environ.get("OUTBOX_TEST_REDIS_URL")
    if not pg and _answers("127.0.0.1", 5432):
        pg = DEFAULT_PG
    if not rd and _answers("127.0.0.1", 6379):
        rd = DEFAULT_REDIS
    with contextlib.ExitStack() as stack:
        if not pg or not rd:
            try:
                from testcontainers.postgres import PostgresContainer
                from testcontainers.redis import RedisContainer

                if not pg:
                    container = stack.enter_context(
                        PostgresContainer("postgres:16", driver="psycopg")
                    )
                    pg = container.get_connection_url()
                if not rd:
                    rc = stack.enter_context(RedisContainer("redis:7"))
                    rd = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
            except Exception as exc:
                raise ServicesUnavailable(f"{HOW_TO_PROVIDE} (testcontainers: {exc})") from exc
        services = Services(admin_url=normalize_url(pg), redis_url=rd)
        check(services)
        yield services


def check(services: Services) -> None:
    """Fail with one clear message unless both servers answer."""
    try:
        with psycopg.connect(libpq_url(services.admin_url), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        redis.Redis.from_url(services.redis_url, socket_timeout=5).ping()
    except (psycopg.Error, redis.RedisError) as exc:
        raise ServicesUnavailable(f"{HOW_TO_PROVIDE} ({exc})") from exc


def unique_name(kind: str) -> str:
    """Return a database or key name no other test (or run) uses."""
    return f"outbox_test_{kind}_{uuid.uuid4().hex[:12]}"


def create_template(admin_url: URL) -> URL:
    """Create and migrate a template database once per session; per-test copies are cheap."""
    url = admin_url.set(database=unique_name("tmpl"))
    upgrade(url)
    return url


def create_database(admin_url: URL, template: str | None = None) -> URL:
    """Create a new database (a copy of ``template`` when given) and return its URL."""
    name = unique_name("db")
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(query)
    return admin_url.set(database=name)


def drop_database(admin_url: URL, name: str) -> None:
    """Drop a database this suite created, closing whatever is still connected to it."""
    assert name.startswith("outbox_test_"), name  # never drop what we did not create
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def delete_keys(client: redis.Redis, pattern: str) -> None:
    """Delete the keys matching ``pattern`` (always one of this suite's own prefixes)."""
    assert pattern.startswith("outbox-test:"), pattern
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)


def parse(url: str) -> URL:
    """Parse a SQLAlchemy URL."""
    return make_url(url)
