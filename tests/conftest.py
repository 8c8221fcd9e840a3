"""The project's test harness: the outbox pytest plugin (``tasks.testing.plugin``), under the
names the project's tests use, plus the project's own defaults.

* Real PostgreSQL and Redis, found as the plugin finds them (``tasks.testing.services``); each
  test gets its own database, copied from a migrated template (one per xdist worker), and its
  own Redis key space, so tests run in any order and side by side (``pytest -n 2``).
* Celery is eager (``task_always_eager``, ``task_eager_propagates``) for every test: no beat,
  no worker and no kick unless a test asks for one, so a test that seeds rows decides when
  they are drained. Unlike the plugin's ``outbox_eager``, the project's own ``outbox`` fixture
  keeps the real kicker: kicks are what some of these tests are about.
* The project's environment variables are scrubbed, so nothing reaches a developer's servers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import URL, Engine, orm

from tasks import app, runtime
from tasks.outbox import close_kicker
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings

# The outbox plugin itself is loaded by its entry point (the package is installed).
pytest_plugins = ["tests.workers"]


def pytest_configure(config: pytest.Config) -> None:
    for name in list(os.environ):
        if name.startswith(("OUTBOX_", "CELERY_")) and not name.startswith("OUTBOX_TEST_"):
            del os.environ[name]


@pytest.fixture
def db_url(outbox_database: URL) -> URL:
    """A fresh, migrated database for this test alone."""
    return outbox_database


@pytest.fixture
def engine(outbox_engine: Engine) -> Engine:
    return outbox_engine


@pytest.fixture
def Session(outbox_session_factory: orm.sessionmaker[orm.Session]) -> orm.sessionmaker[orm.Session]:
    return outbox_session_factory


@pytest.fixture
def key_space(outbox_key_space: str) -> str:
    """This test's own Redis namespace; everything under it is deleted afterwards."""
    return outbox_key_space


@pytest.fixture
def redis_client(outbox_redis: redis.Redis) -> redis.Redis:
    return outbox_redis


@pytest.fixture
def settings(outbox_settings: Settings) -> Settings:
    # Three attempts, not the default's ten, so tests reach a stalled run in a few drains.
    return dataclasses.replace(outbox_settings, max_attempts=3)


@pytest.fixture
def publisher(redis_client: redis.Redis, settings: Settings) -> RedisStreamSink:
    return RedisStreamSink(redis_client, settings.stream_prefix)


@pytest.fixture(autouse=True)
def celery_eager() -> Iterator[None]:
    """Celery runs tasks in the caller, and propagates their errors; no beat, no worker."""
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield
    runtime.reset()


@pytest.fixture
def outbox(
    settings: Settings,
    Session: orm.sessionmaker[orm.Session],
    redis_client: redis.Redis,
) -> runtime.Runtime:
    """The process runtime (used by the tasks and the CLI) pointed at this test's services."""
    return runtime.configure(settings, session_factory=Session, redis_client=redis_client)


@pytest.fixture
def broker_queue(
    outbox: runtime.Runtime, key_space: str, redis_client: redis.Redis, broker_url: str
) -> Iterator[str]:
    """Tasks this test sends go to the real broker (``broker_url``, the sink's Redis unless
    parametrised), routed as ``OUTBOX_QUEUE`` routes them, into a queue of its own: eager is
    off."""
    from tests import workers  # a plugin (pytest_plugins): imported once pytest has it

    name = f"{key_space}queue"
    saved = app.conf.task_routes, app.conf.broker_url
    app.conf.update(task_always_eager=False, task_routes={"outbox.*": {"queue": name}})
    workers.point_app_at(broker_url)
    yield name
    app.conf.update(task_always_eager=True, task_routes=saved[0])
    close_kicker()  # an AMQP socket left to the garbage collector is a ResourceWarning
    workers.point_app_at(saved[1])
    workers.delete_queue(broker_url, name, redis_client)
