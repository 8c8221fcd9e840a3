"""The outbox's pytest plugin: deterministic outbox tests for an application's own suite.

Installed with the package and loaded automatically (the ``pytest11`` entry point ``outbox``,
module ``outbox_pytest_plugin``, which loads this one unless an application's own ``tasks`` or
``models`` package takes the name, and then stands aside with one line; ``-p no:outbox``
leaves it out). Loading it only defines fixtures, none of them autouse, and
registers the ``services`` marker, which it puts on the tests that use its servers (so
``-m "not services"`` runs the rest). No server, no Celery and no environment variable is
touched until a test asks for a fixture. The fixtures:

* ``outbox_database_server``, ``outbox_redis_server`` (session): where PostgreSQL and Redis
  are (``tasks.testing.services``); when one is missing, the run stops with one message saying
  how to provide it, never a skip, and exit code 4 (``pytest.ExitCode.USAGE_ERROR``: the
  environment lacks a service; not 3, pytest's code for an internal error).
* ``outbox_template`` (session): a migrated template database, one per session, or per xdist
  worker. ``outbox_database``: a copy of it for this test alone, under a name no test used
  before (afterwards emptied and kept for a later test if it is as the template left it and
  nothing is connected to it, else dropped: ``tasks.testing.databases``);
  ``outbox_engine``, ``outbox_session_factory`` on it.
* ``outbox_key_space``: this test's own Redis prefix (streams, marks, queue), deleted
  afterwards; ``outbox_redis``: a client of the test Redis.
* ``outbox_sink_kind``: ``"redis"`` (the real stream sink) or ``"memory"`` (no Redis at all);
  override it in a conftest, or parametrize a test over it. ``outbox_settings``: the settings
  pointing at all of the above. ``outbox_sink``: the sink, and its streams read back.
* ``outbox_eager``: the Celery app eager, no beat, no worker, kicks recorded by
  ``outbox_kicker`` instead of sent, and the process runtime pointed at this test's database
  and sink; all put back afterwards.
* ``outbox_drain``: drain one run, every run once, or until idle, when the test says so, each
  step after checking that no foreign drainer is attached to the database (the guard,
  ``outbox_guard``), each returning the drain's result and the entries it added.
* ``outbox_worker``: opt-in, a real ``celery worker`` and beat as subprocesses on this test's
  database and queue, always stopped when the test ends, pass or fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import redis
    from sqlalchemy import URL, Engine
    from sqlalchemy.orm import Session, sessionmaker

    from tasks import runtime
    from tasks.settings import Settings
    from tasks.testing.databases import DatabasePool
    from tasks.testing.drainer import Drainer
    from tasks.testing.eager import RecordingKicker
    from tasks.testing.guard import Guard
    from tasks.testing.sinks import Streams
    from tasks.testing.workers import Workers

# The fixtures that reach a server: a test that uses any of them is marked `services`.
SERVER_FIXTURES = frozenset({"outbox_database_server", "outbox_redis_server"})
# The Redis URL of a test on the in-memory sink: nothing listens there, so a use of Redis that
# the test did not expect (a task's queue marks) fails at once instead of reaching a server.
NO_REDIS_URL = "redis://127.0.0.1:1/0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "services: needs PostgreSQL or Redis (the outbox plugin sets it on every test that "
        "uses its servers); -m 'not services' runs the others",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def outbox_database_server() -> Iterator[URL]:
    """An admin URL of the test PostgreSQL server (a role that may CREATE DATABASE)."""
    from tasks.testing import services

    try:
        with services.database_server() as url:
            yield url
    except services.ServicesUnavailable as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def outbox_redis_server() -> Iterator[str]:
    """The URL of the test Redis server."""
    from tasks.testing import services

    try:
        with services.redis_server() as url:
            yield url
    except services.ServicesUnavailable as exc:
        pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def outbox_template(outbox_database_server: URL) -> Iterator[URL]:
    """A migrated database that each test's database is copied from; one per xdist worker."""
    from tasks.testing import services

    url = services.create_template(
        outbox_database_server, os.environ.get("PYTEST_XDIST_WORKER", "")
    )
    yield url
    services.drop_database(outbox_database_server, str(url.database))


@pytest.fixture(scope="session")
def _outbox_database_pool(
    outbox_database_server: URL, outbox_template: URL
) -> Iterator[DatabasePool]:
    """Copies of the template, each handed to one test at a time (``tasks.testing.databases``)."""
    from tasks.testing.databases import DatabasePool

    pool = DatabasePool(outbox_database_server, str(outbox_template.database))
    yield pool
    pool.close()


@pytest.fixture
def outbox_database(_outbox_database_pool: DatabasePool) -> Iterator[URL]:
    """A migrated database for this test alone, with a name no test used before; afterwards
    emptied and renamed for a later test if it is as the template left it, else dropped."""
    url = _outbox_database_pool.acquire()
    yield url
    _outbox_database_pool.release(url)


@pytest.fixture
def outbox_engine(outbox_database: URL) -> Iterator[Engine]:
    """An engine on this test's database (the project's engine settings)."""
    from models.db import make_engine

    engine = make_engine(outbox_database, pool_size=10, max_overflow=20)
    yield engine
    engine.dispose()


@pytest.fixture
def outbox_session_factory(outbox_engine: Engine) -> sessionmaker[Session]:
    """Sessions on this test's database, for the test's own writes and reads."""
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(outbox_engine, expire_on_commit=False)


@pytest.fixture
def outbox_key_space() -> str:
    """This test's own Redis namespace; everything under it is deleted afterwards."""
    from tasks.testing import services

    return services.key_space()


@pytest.fixture
def outbox_sink_kind() -> str:
    """``redis`` (the real stream sink) or ``memory`` (no Redis); override or parametrize it."""
    return "redis"


@pytest.fixture
def outbox_redis(outbox_redis_server: str, outbox_key_space: str) -> Iterator[redis.Redis]:
    """A client of the test Redis; the test's key space is deleted afterwards."""
    import redis

    from tasks.testing import services

    client = redis.Redis.from_url(outbox_redis_server, socket_timeout=10)
    yield client
    services.delete_keys(client, f"{outbox_key_space}*")
    client.close()


@pytest.fixture
def outbox_settings(
    request: pytest.FixtureRequest,
    outbox_database: URL,
    outbox_key_space: str,
    outbox_sink_kind: str,
) -> Settings:
    """The outbox settings of this test: its database, its Redis (if any) and its prefixes."""
    from tasks.settings import Settings
    from tasks.testing.sinks import SINK_KINDS

    if outbox_sink_kind not in SINK_KINDS:
        pytest.fail(
            f"outbox_sink_kind must be one of {', '.join(SINK_KINDS)}, got {outbox_sink_kind!r}",
            pytrace=False,
        )
    redis_url = (
        request.getfixturevalue("outbox_redis_server")
        if outbox_sink_kind == "redis"
        else NO_REDIS_URL
    )
    return Settings(
        database_url=outbox_database,
        redis_url=redis_url,
        stream_prefix=f"{outbox_key_space}run:",
        queued_prefix=f"{outbox_key_space}queued:",
    )


@pytest.fixture
def outbox_sink(
    request: pytest.FixtureRequest, outbox_settings: Settings, outbox_sink_kind: str
) -> Streams:
    """The sink this test's drains publish into, with ``entries(run_id)`` to read a stream."""
    from tasks.testing.sinks import MemoryStreams, RedisStreams

    if outbox_sink_kind == "memory":
        return MemoryStreams()
    return RedisStreams(request.getfixturevalue("outbox_redis"), outbox_settings.stream_prefix)


@pytest.fixture
def outbox_kicker() -> RecordingKicker:
    """The kicker registered under ``outbox_eager``: it records kicks and queues nothing."""
    from tasks.testing.eager import RecordingKicker

    return RecordingKicker()


@pytest.fixture
def outbox_eager(
    outbox_settings: Settings,
    outbox_session_factory: sessionmaker[Session],
    outbox_sink: Streams,
    outbox_kicker: RecordingKicker,
) -> Iterator[runtime.Runtime]:
    """The Celery app eager, kicks recorded, and the runtime on this test's services."""
    from tasks.testing.eager import eager_outbox
    from tasks.testing.sinks import RedisStreams

    client = outbox_sink.client if isinstance(outbox_sink, RedisStreams) else None
    with eager_outbox(
        outbox_settings,
        session_factory=outbox_session_factory,
        sink=outbox_sink.publisher,
        redis_client=client,
        kicker=outbox_kicker,
    ) as current:
        yield current


@pytest.fixture
def outbox_guard(outbox_engine: Engine) -> Guard:
    """Finds outbox processes attached to this test's database other than the test's own."""
    from tasks.testing.guard import Guard

    return Guard(outbox_engine)


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


@pytest.fixture
def outbox_drain(
    outbox_eager: runtime.Runtime,
    outbox_session_factory: sessionmaker[Session],
    outbox_sink: Streams,
    outbox_settings: Settings,
    outbox_guard: Guard,
) -> Drainer:
    """Step-wise draining: ``run(run_id)``, ``once()``, ``until_idle()``; guarded."""
    from tasks.testing.drainer import Drainer

    return Drainer(
        outbox_session_factory, outbox_sink, outbox_settings, outbox_guard, on_foreign=_fail
    )


@pytest.fixture
def outbox_worker(
    outbox_settings: Settings,
    outbox_sink_kind: str,
    outbox_key_space: str,
    outbox_redis: redis.Redis,
    outbox_guard: Guard,
    tmp_path: Path,
) -> Iterator[Workers]:
    """Opt-in: real worker and beat subprocesses (``start_worker()``, ``start_beat()``) on
    this test's database, key space and queue, stopped when the test ends, pass or fail."""
    from tasks.testing.workers import Workers

    if outbox_sink_kind != "redis":
        pytest.fail(
            "outbox_worker needs the Redis sink: a worker in another process cannot publish "
            "into this test's in-memory sink (outbox_sink_kind is 'memory')",
            pytrace=False,
        )
    queue = f"{outbox_key_space}queue"
    workers = Workers(outbox_settings, queue, tmp_path)
    outbox_guard.allow(workers.process_groups)
    try:
        yield workers
    finally:
        workers.stop()
        # The queue itself lies in the key space; Kombu keeps its bindings beside it.
        outbox_redis.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
