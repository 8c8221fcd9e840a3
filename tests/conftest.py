"""The deterministic test harness.

* Real PostgreSQL and Redis (see tests/services.py); each test gets its own database, copied
  from a migrated template, and its own stream prefix, so tests run in any order.
* Celery is eager (``task_always_eager``, ``task_eager_propagates``): no beat, no worker and no
  kick unless a test asks for one, so a test that seeds rows decides when they are drained.
* The project's environment variables are scrubbed, so nothing reaches a developer's servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import URL, Engine, orm

from models.db import make_engine
from tasks import app, runtime
from tasks.outbox import close_kicker
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings
from tests import services

pytest_plugins = ["tests.workers"]


def pytest_configure(config: pytest.Config) -> None:
    for name in list(os.environ):
        if name.startswith(("OUTBOX_", "CELERY_")) and not name.startswith("OUTBOX_TEST_"):
            del os.environ[name]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that reaches the servers, through any fixture, is marked `services`, so that
    # `pytest -m "not services"` runs exactly the tests that need none.
    for item in items:
        if "service_urls" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def service_urls() -> Iterator[services.Services]:
    try:
        with services.provide() as provided:
            yield provided
    except services.ServicesUnavailable as exc:
        pytest.exit(str(exc), returncode=3)


@pytest.fixture(scope="session")
def template_url(service_urls: services.Services) -> Iterator[URL]:
    url = services.create_template(service_urls.admin_url)
    yield url
    services.drop_database(service_urls.admin_url, str(url.database))


@pytest.fixture
def db_url(service_urls: services.Services, template_url: URL) -> Iterator[URL]:
    """A fresh, migrated database for this test alone."""
    url = services.create_database(service_urls.admin_url, template=template_url.database)
    yield url
    services.drop_database(service_urls.admin_url, str(url.database))


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    engine = make_engine(db_url, pool_size=10, max_overflow=20)
    yield engine
    engine.dispose()


@pytest.fixture
def Session(engine: Engine) -> orm.sessionmaker[orm.Session]:
    return orm.sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def key_space() -> str:
    """This test's own Redis namespace; everything under it is deleted afterwards."""
    return f"outbox-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_client(service_urls: services.Services, key_space: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(service_urls.redis_url, socket_timeout=10)
    yield client
    services.delete_keys(client, f"{key_space}*")
    client.close()


@pytest.fixture
def settings(db_url: URL, service_urls: services.Services, key_space: str) -> Settings:
    return Settings(
        database_url=db_url,
        redis_url=service_urls.redis_url,
        stream_prefix=f"{key_space}run:",
        queued_prefix=f"{key_space}queued:",
        max_attempts=3,
    )


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
