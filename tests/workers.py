"""Real ``celery worker`` and beat subprocesses for the end-to-end tests, and their brokers.

``celery_processes`` is the plugin's ``tasks.testing.workers.Workers`` on this test's settings,
key space and broker, always stopped when the test ends. The broker is the sink's Redis unless
the test is parametrised over ``BROKERS`` (every test of ``tests/e2e/test_worker.py`` also runs
on RabbitMQ). The test's queue reaches the workers as ``OUTBOX_QUEUE``, so every drain gets
there through the outbox tasks' routing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection
from kombu.exceptions import OperationalError

from tasks import app
from tasks.settings import Settings
from tasks.testing import services
from tasks.testing.workers import Workers

# The brokers the end-to-end tests run on. RabbitMQ comes from OUTBOX_TEST_AMQP_URL, else the
# local default; like the other services, when it does not answer the test fails, never skips.
BROKERS = ("redis", "rabbitmq")
RABBITMQ_URL = os.environ.get("OUTBOX_TEST_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def is_amqp(broker_url: str) -> bool:
    """True for a RabbitMQ (AMQP) broker URL."""
    return broker_url.partition("://")[0] in {"amqp", "amqps", "pyamqp"}


def rabbitmq_url() -> str:
    """RabbitMQ's URL, once it has answered; fails the test with how to provide it if not."""
    with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
        try:
            connection.ensure_connection(max_retries=1)
        except (OperationalError, *connection.connection_errors) as exc:
            pytest.fail(
                f"RabbitMQ does not answer at {connection.as_uri()} ({exc}): start it on "
                "127.0.0.1:5672 (guest/guest), or set OUTBOX_TEST_AMQP_URL",
                pytrace=False,
            )
    return RABBITMQ_URL


def point_app_at(broker_url: str) -> None:
    """Make this process's Celery app send to ``broker_url`` from now on."""
    app.conf.update(broker_url=broker_url)
    # The app keeps its broker's connection pools: forget them, or sends would still go to
    # the broker of an earlier test. Kombu keeps them too, one per broker, and hands the same
    # ones back for the same broker: they stay open, for the next test on that broker.
    app._pool = None
    app.amqp._producer_pool = None


def delete_queue(broker_url: str, queue: str, redis_client: redis.Redis) -> None:
    """Delete what the broker keeps of this test's ``queue``, and nothing else."""
    if is_amqp(broker_url):
        with Connection(broker_url, connect_timeout=10) as connection:
            channel = connection.default_channel
            channel.queue_delete(queue)
            channel.exchange_delete(queue)  # Celery declares an exchange named after the queue
    else:  # the Redis transport's queue is a list under the test's key space; its bindings:
        redis_client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def queued_messages(broker_url: str, queue: str, redis_client: redis.Redis) -> int:
    """How many messages wait in ``queue``, not counting those a worker holds."""
    if is_amqp(broker_url):
        with Connection(broker_url, connect_timeout=10) as connection:
            _, count, _ = connection.default_channel.queue_declare(queue, passive=True)
            return int(count)
    return int(redis_client.llen(queue))


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, settings: Settings) -> str:
    """The test's broker: the sink's Redis, or one of ``BROKERS`` when parametrised with it
    (``pytest.mark.parametrize("broker_url", BROKERS, indirect=True)``)."""
    kind = getattr(request, "param", "redis")
    assert kind in BROKERS, kind
    return rabbitmq_url() if kind == "rabbitmq" else settings.redis_url


@pytest.fixture
def celery_processes(
    settings: Settings,
    key_space: str,
    tmp_path: Path,
    redis_client: redis.Redis,
    broker_url: str,
) -> Iterator[Workers]:
    queue = f"{key_space}queue"
    supervisor = Workers(settings, queue, tmp_path, broker_url)
    try:
        yield supervisor
    finally:
        supervisor.stop()
        delete_queue(broker_url, queue, redis_client)
        services.delete_keys(redis_client, f"{key_space}*")
