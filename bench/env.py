"""The bench's own database and Redis key space: created at the start, removed at the end.

Everything the bench creates is named so that it can be found again and nothing else is ever
touched: one database ``outbox_bench_<hex>`` and Redis keys under ``outbox-bench:<hex>:`` (plus
the two kombu binding keys of the bench's own queue, which kombu names after the queue).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Iterator

import psycopg
import redis
from psycopg import sql
from sqlalchemy import URL

from models import migrate
from models.db import libpq_url, normalize_url

logger = logging.getLogger(__name__)

DATABASE_PREFIX = "outbox_bench_"
KEY_ROOT = "outbox-bench:"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# Variables that point the project somewhere: the bench sets its own and scrubs any other
# CELERY_* (a result backend, say) so that every process measures the same configuration.
# Other OUTBOX_* variables (batch size and such) pass through on purpose, as tuning knobs, and
# the settings in effect are recorded in the results.
_OWN_VARIABLES = (
    "OUTBOX_DATABASE_URL",
    "OUTBOX_REDIS_URL",
    "OUTBOX_STREAM_PREFIX",
    "OUTBOX_QUEUED_PREFIX",
    "OUTBOX_DISPATCH_INTERVAL",
    "CELERY_BROKER_URL",
    "CELERY_TASK_DEFAULT_QUEUE",
    "OUTBOX_QUEUE",
)


@dataclasses.dataclass(frozen=True)
class BenchEnv:
    """Names and addresses of everything this bench run owns."""

    admin_url: URL
    database_url: URL
    redis_url: str
    key_prefix: str  # outbox-bench:<hex>:

    @property
    def database(self) -> str:
        """The bench's database name."""
        return str(self.database_url.database)

    @property
    def conninfo(self) -> str:
        """The bench database as a libpq URI, for plain psycopg."""
        return libpq_url(self.database_url)

    @property
    def stream_prefix(self) -> str:
        """Prefix of the run streams (OUTBOX_STREAM_PREFIX)."""
        return f"{self.key_prefix}run:"

    @property
    def queued_prefix(self) -> str:
        """Prefix of the queued-drain marks (OUTBOX_QUEUED_PREFIX)."""
        return f"{self.key_prefix}queued:"

    @property
    def queue(self) -> str:
        """The Celery queue of the bench's workers (OUTBOX_QUEUE, CELERY_TASK_DEFAULT_QUEUE)."""
        return f"{self.key_prefix}queue"

    def variables(self, dispatch_interval: float = 1.0) -> dict[str, str]:
        """The environment that points the project's code at the bench's servers."""
        return {
            "OUTBOX_DATABASE_URL": self.database_url.render_as_string(hide_password=False),
            "OUTBOX_REDIS_URL": self.redis_url,
            "OUTBOX_STREAM_PREFIX": self.stream_prefix,
            "OUTBOX_QUEUED_PREFIX": self.queued_prefix,
            "OUTBOX_DISPATCH_INTERVAL": str(dispatch_interval),
            "CELERY_BROKER_URL": self.redis_url,
            "CELERY_TASK_DEFAULT_QUEUE": self.queue,
            "OUTBOX_QUEUE": self.queue,  # where the outbox tasks are routed
        }

    def stream_key(self, run_id: uuid.UUID) -> str:
        """The Redis key of a run's stream (the project's naming: ``<prefix><run_id>``)."""
        return f"{self.stream_prefix}{run_id}"


def new_env(admin_url: str = DEFAULT_ADMIN_URL, redis_url: str = DEFAULT_REDIS_URL) -> BenchEnv:
    """Pick fresh names for this run's database and key prefix (nothing is created yet)."""
    token = uuid.uuid4().hex[:12]
    admin = normalize_url(admin_url)
    return BenchEnv(
        admin_url=admin,
        database_url=admin.set(database=f"{DATABASE_PREFIX}{token}"),
        redis_url=redis_url,
        key_prefix=f"{KEY_ROOT}{token}:",
    )


def export(env: BenchEnv) -> None:
    """Point this process (and every child it starts) at the bench's servers."""
    for name in list(os.environ):
        if name.startswith("CELERY_") or name in _OWN_VARIABLES:
            del os.environ[name]
    os.environ.update(env.variables())


def create_database(env: BenchEnv) -> None:
    """Create the bench database (it must not exist yet)."""
    if not migrate.ensure_database(env.database_url):
        # The name is random; an existing database is someone else's and must not be used.
        raise RuntimeError(f"database {env.database} exists already")


def migrate_database(env: BenchEnv) -> None:
    """Apply the project's migrations to the bench database."""
    migrate.upgrade(env.database_url, create=False)


def drop_database(env: BenchEnv) -> None:
    """Drop the bench database, closing whatever is still connected to it."""
    name = env.database
    if not name.startswith(DATABASE_PREFIX):  # never drop what the bench did not create
        raise RuntimeError(f"refusing to drop {name!r}")
    with psycopg.connect(libpq_url(env.admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def delete_matching(client: redis.Redis, prefix: str) -> int:
    """Delete every key that starts with ``prefix`` (always under a bench prefix); return count."""
    if not prefix.startswith(KEY_ROOT) or len(prefix) <= len(KEY_ROOT) + 1:
        raise RuntimeError(f"refusing to delete keys under {prefix!r}")
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += int(client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def delete_keys(client: redis.Redis, env: BenchEnv) -> int:
    """Delete every key under the bench prefix and its queue's kombu bindings; return count."""
    deleted = delete_matching(client, env.key_prefix)
    # kombu's Redis transport keeps a queue's bindings outside the queue's own key.
    deleted += int(
        client.unlink(f"_kombu.binding.{env.queue}", f"_kombu.binding_permanent.{env.queue}")
    )
    return deleted


@contextlib.contextmanager
def provisioned(env: BenchEnv) -> Iterator[redis.Redis]:
    """Create the database, yield a Redis client; always drop both the database and the keys."""
    client = redis.Redis.from_url(env.redis_url, socket_timeout=60)
    created = False
    try:
        create_database(env)
        created = True
        migrate_database(env)
        yield client
    finally:
        # Each step on its own: a failure to drop the database must not leave the keys behind.
        try:
            if created:
                drop_database(env)
                logger.info("dropped database %s", env.database)
        finally:
            deleted = delete_keys(client, env)
            logger.info("deleted %d Redis keys under %s", deleted, env.key_prefix)
            client.close()
