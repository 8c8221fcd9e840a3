"""The pool of per-test databases (tasks.testing.databases): a database goes back to it only
emptied to exactly what a fresh copy of the template holds, and under a new name; one that is
still connected to, or whose schema a test changed, is dropped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import URL, update
from sqlalchemy.orm import sessionmaker

from models import append_event, create_run
from models.db import libpq_url, make_engine
from models.run import SinkHealth
from tasks.testing import services
from tasks.testing.databases import DatabasePool


@pytest.fixture
def pool(outbox_database_server: URL, outbox_template: URL) -> Iterator[DatabasePool]:
    pool = DatabasePool(outbox_database_server, str(outbox_template.database))
    yield pool
    pool.close()


def exists(admin_url: URL, name: str) -> bool:
    with psycopg.connect(libpq_url(admin_url)) as conn:
        query = "SELECT count(*) FROM pg_database WHERE datname = %s"
        row = conn.execute(query, (name,)).fetchone()
    return row is not None and row[0] == 1


def contents(url: URL) -> dict[str, Any]:
    """Every table's rows and every sequence's position, by name; but for ``updated_at``,
    which a seeded row has from the moment it was written."""
    with psycopg.connect(libpq_url(url)) as conn:
        tables = conn.execute(
            "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relkind IN ('r', 'S') ORDER BY relname"
        ).fetchall()
        found: dict[str, Any] = {}
        for name, kind in tables:
            columns = "last_value, is_called" if kind == "S" else "to_jsonb(t) - 'updated_at'"
            query = sql.SQL("SELECT {} FROM {} AS t ORDER BY 1").format(
                sql.SQL(columns), sql.Identifier(name)
            )
            found[name] = conn.execute(query).fetchall()
    return found


def write_something(url: URL) -> None:
    """What a test does: runs and events, and the sink's health record changed."""
    engine = make_engine(url)
    with sessionmaker(engine)() as session, session.begin():
        run = create_run(session)
        for n in range(3):
            append_event(session, run.id, "written", {"n": n})
        session.execute(update(SinkHealth).values(probes=7, last_error="down"))
    engine.dispose()


def test_a_used_database_comes_back_renamed_and_holding_what_a_fresh_copy_holds(
    pool: DatabasePool, outbox_database_server: URL, outbox_template: URL
) -> None:
    used = pool.acquire()
    write_something(used)

    assert pool.release(used)

    again = pool.acquire()
    assert again.database != used.database  # a name no test used before
    assert not exists(outbox_database_server, str(used.database))
    fresh = services.create_database(outbox_database_server, str(outbox_template.database))
    try:
        assert contents(again) == contents(fresh)  # the seeded health row, counters at 1
        assert contents(again)["sink_health"] != []
    finally:
        services.drop_database(outbox_database_server, str(fresh.database))
    pool.release(again)


def test_a_database_still_connected_to_is_dropped_and_its_connection_cut(
    pool: DatabasePool, outbox_database_server: URL
) -> None:
    used = pool.acquire()
    with psycopg.connect(libpq_url(used), autocommit=True) as left_open:  # a leaked process's
        assert not pool.release(used)

        assert not exists(outbox_database_server, str(used.database))
        assert pool.free == []
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")


@pytest.mark.parametrize(
    "change",
    [
        "CREATE TABLE things (id integer)",
        "ALTER TABLE runs ADD COLUMN note text",
        "ALTER TABLE run_events ALTER COLUMN type SET DEFAULT 'x'",
        "DROP INDEX ix_run_events_pending",
        "GRANT SELECT ON runs TO PUBLIC",
        "CREATE SCHEMA app",
        "CREATE FUNCTION one() RETURNS integer LANGUAGE sql AS 'SELECT 1'",
        "ALTER DATABASE {database} SET work_mem = '8MB'",
        "UPDATE alembic_version SET version_num = '0001'",
    ],
)
def test_a_database_whose_schema_a_test_changed_is_dropped_not_reused(
    pool: DatabasePool, outbox_database_server: URL, change: str
) -> None:
    used = pool.acquire()
    with psycopg.connect(libpq_url(used), autocommit=True) as conn:
        statement = sql.SQL(change).format(database=sql.Identifier(str(used.database)))
        conn.execute(statement)

    assert not pool.release(used)

    assert not exists(outbox_database_server, str(used.database))
    assert pool.free == []
