"""Each test's own database, from a pool of copies of the migrated template.

Copying the template (``CREATE DATABASE ... TEMPLATE``) costs 0.1 to 0.3 s on a small
machine, most of a short test's time; emptying a database a test has finished with costs a
few milliseconds. So a finished database goes back to the pool, on three conditions, and is
dropped otherwise:

* nothing is connected to it any more: a process a test left running (the failure this
  project exists to prevent) keeps its database out of the pool, and is cut off by the drop;
* its schema, grants and settings are still the template's (``FINGERPRINT``): a test that
  migrated, altered or created anything is not undone, it is thrown away;
* once emptied, it is renamed: the next test gets a name never used before, so a process
  that outlived its test and connects again by the old name finds no database, exactly as
  with a dropped one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql
from sqlalchemy import URL

from models.db import libpq_url
from tasks.testing import services

# What a test could change that emptying the tables would not put back: every object outside
# the system schemas with its grants, columns, defaults, constraints, indexes, triggers,
# functions and policies, the schemas, extensions, the database's own grants and settings,
# and the migration the schema is at.
FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
    SELECT format('class %s.%s %s %s %s', n.nspname, c.relname, c.relkind, c.relacl,
                  c.relrowsecurity) AS item
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
    UNION ALL
    SELECT format('column %s.%s %s %s %s %s', a.attrelid::regclass, a.attname,
                  a.atttypid::regtype, a.attnotnull, a.attisdropped,
                  pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attnum > 0 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname !~ '^pg_toast'
    UNION ALL
    SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace <> 'pg_catalog'::regnamespace
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(indexrelid)) FROM pg_index
    WHERE indrelid::regclass::text !~ '^(pg_|information_schema)'
    UNION ALL
    SELECT format('trigger %s %s %s', tgrelid::regclass, tgname, tgenabled) FROM pg_trigger
    UNION ALL
    SELECT format('function %s.%s %s %s', n.nspname, p.proname, md5(p.prosrc), p.proacl)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT format('policy %s %s', polrelid::regclass, polname) FROM pg_policy
    UNION ALL
    SELECT format('schema %s %s', nspname, nspacl) FROM pg_namespace
    UNION ALL
    SELECT format('extension %s %s', extname, extversion) FROM pg_extension
    UNION ALL
    SELECT format('database %s %s %s', datacl, datallowconn, datconnlimit) FROM pg_database
    WHERE datname = current_database()
    UNION ALL
    SELECT format('setting %s %s', setrole, setconfig) FROM pg_db_role_setting
    WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL
    SELECT format('migration %s', version_num) FROM alembic_version
) AS items
"""
# Empty every table but the migrations' own, counters back to 1, then the rows the
# migrations seed (0002: the sink's health record). tests/integration/test_databases.py checks
# that an emptied database holds what a fresh copy holds.
EMPTY = """
TRUNCATE runs, run_events, run_outbox, sink_health RESTART IDENTITY CASCADE;
INSERT INTO sink_health (id) VALUES (1);
"""
OTHERS_CONNECTED = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
# Seconds to wait for the backends of connections the test just closed to end.
BACKENDS_WAIT = 1.0


class DatabasePool:
    """Copies of ``template`` for one test at a time; ``close`` drops those left."""

    def __init__(self, admin_url: URL, template: str) -> None:
        self.admin_url = admin_url
        self.template = template
        self.free: list[URL] = []
        first = self.acquire()
        with psycopg.connect(libpq_url(first), autocommit=True) as conn:
            self.fingerprint = _fingerprint(conn)
        self.free.append(first)

    def acquire(self) -> URL:
        """A database for one test: an emptied one from the pool, or a new copy."""
        if self.free:
            return self.free.pop()
        return services.create_database(self.admin_url, self.template)

    def release(self, url: URL) -> bool:
        """Take back a test's database: emptied, renamed and pooled if it is as the template
        left it and nothing is connected to it, else dropped. True when it was pooled."""
        name = str(url.database)
        if self._emptied(url):
            fresh = services.unique_name("db")
            if self._rename(name, fresh):
                self.free.append(url.set(database=fresh))
                return True
        services.drop_database(self.admin_url, name)
        return False

    def close(self) -> None:
        """Drop every pooled database."""
        while self.free:
            services.drop_database(self.admin_url, str(self.free.pop().database))

    def _emptied(self, url: URL) -> bool:
        """Empty the database if it may be reused; False (and nothing done) if not."""
        try:
            with psycopg.connect(libpq_url(url), autocommit=True) as conn:
                if not _alone(conn) or _fingerprint(conn) != self.fingerprint:
                    return False
                conn.execute("SET lock_timeout = '1s'")  # a connection that came meanwhile
                conn.execute(EMPTY)
        except psycopg.Error:  # dropped, altered beyond reading, locked: not reused
            return False
        return True

    def _rename(self, name: str, fresh: str) -> bool:
        """Rename ``name`` to ``fresh``; False if something stays connected to it."""
        query = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(name), sql.Identifier(fresh)
        )

        def renamed() -> bool:
            try:
                conn.execute(query)
            except psycopg.errors.ObjectInUse:  # the backend we closed may still be ending
                return False
            return True

        with psycopg.connect(libpq_url(self.admin_url), autocommit=True) as conn:
            return _soon(renamed)


def _fingerprint(conn: psycopg.Connection) -> str:
    row = conn.execute(FINGERPRINT).fetchone()
    return str(row[0]) if row else ""


def _alone(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` is the database's only connection, once the backends of connections
    just closed have had ``BACKENDS_WAIT`` to end."""

    def no_other() -> bool:
        row = conn.execute(OTHERS_CONNECTED).fetchone()
        return row is not None and row[0] == 0

    return _soon(no_other)


def _soon(condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` comes true within ``BACKENDS_WAIT`` (polled every 10 ms)."""
    deadline = time.monotonic() + BACKENDS_WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
