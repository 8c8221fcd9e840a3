"""Schema management: create the database when it is missing, then apply Alembic migrations."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import URL

from models import errors
from models.db import database_url, libpq_url, normalize_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def ensure_database(url: URL) -> bool:
    """Create the database named in ``url`` if it does not exist; return True if created."""
    name = url.database
    if not name:
        raise errors.ConfigError("the database URL names no database")
    target = url.render_as_string(hide_password=True)
    try:
        with psycopg.connect(libpq_url(url, "postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    except psycopg.errors.InsufficientPrivilege as exc:
        raise errors.ConfigError(
            f"database {name!r} does not exist and this role may not create it; ask an "
            f'administrator to run: CREATE DATABASE "{name}" OWNER "{url.username or ""}";'
        ) from exc
    except psycopg.OperationalError as exc:
        raise errors.ConfigError(
            f"cannot connect to PostgreSQL at {target}: {str(exc).strip()}. "
            "Is the server running, and is OUTBOX_DATABASE_URL right?"
        ) from exc


def alembic_config(url: URL) -> Config:
    """Return an Alembic config pointing at the packaged migrations and ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def upgrade(url: str | URL | None = None, *, create: bool = True) -> bool:
    """Bring the schema at ``url`` to the latest revision; return True if the database was new."""
    parsed = database_url() if url is None else normalize_url(url)
    created = ensure_database(parsed) if create else False
    command.upgrade(alembic_config(parsed), "head")
    return created
