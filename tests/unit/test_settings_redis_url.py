"""The database a Redis URL names, checked at start-up (the refused forms are in the corpus,
tests/corpus/environment.py), and what an unset OUTBOX_REDIS_URL means."""

from __future__ import annotations

import pytest
import redis

from models import ConfigError, embedded
from models.db import DEFAULT_DATABASE_URL
from tasks.errors import missing_database
from tasks.settings import CelerySettings, Settings, check_environment

DATABASE = {"OUTBOX_DATABASE_URL": DEFAULT_DATABASE_URL}


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("redis://127.0.0.1:6379", 0),
        ("redis://127.0.0.1:6379/", 0),
        ("redis://127.0.0.1:6379/15", 15),
        ("redis://127.0.0.1:6379/007", 7),
        ("redis://127.0.0.1:6379?db=3", 3),
        ("redis://127.0.0.1:6379/?db=3", 3),
        ("redis://127.0.0.1:6379/3?db=03", 3),
        ("redis://:s3cret@127.0.0.1:6379/2?password=s3cret&protocol=3", 2),
        ("rediss://127.0.0.1:6380/4", 4),
        ("unix:///run/redis/redis.sock", 0),
        ("unix:///run/redis/redis.sock?db=5", 5),
        ("redis://127.0.0.1:6379/%31", 1),  # redis-py decodes the path
    ],
)
def test_a_redis_url_whose_database_is_plain_digits_is_accepted_and_means_that_database(
    url: str, database: int
) -> None:
    settings = Settings.from_env(DATABASE | {"OUTBOX_REDIS_URL": url})
    assert settings.redis_url == url
    # What redis-py reads from it: the same database, never a silent 0.
    assert redis.Redis.from_url(url).connection_pool.connection_kwargs.get("db", 0) == database


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/abc",
        "redis://127.0.0.1:6379/7/extra",
        "redis://127.0.0.1:6379/1?db=2",
        "rediss://127.0.0.1:6380/x",
        "unix:///run/redis/redis.sock?db=x",
    ],
)
def test_a_redis_url_with_an_unreadable_database_is_refused_by_the_celery_settings_too(
    url: str,
) -> None:
    # The broker defaults to the sink's URL: its check is the sink's.
    with pytest.raises(ConfigError, match=r"^OUTBOX_REDIS_URL is not a valid Redis URL: "):
        CelerySettings.from_env({"OUTBOX_REDIS_URL": url})


@pytest.mark.parametrize(
    "broker",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://127.0.0.1:6379//",  # Kombu reads "//" as database 0
        "redis://127.0.0.1:6379/3",
        "redis://127.0.0.1:6379//3",
        "rediss://:s3cret@127.0.0.1:6380/1?ssl_cert_reqs=required",
        "redis+socket:///run/redis/redis.sock",  # Kombu's socket: the path is the socket's
        "amqp://guest:guest@127.0.0.1:5672//",
        "sentinel://127.0.0.1:26379/abc",  # not the Redis transport's path rule
    ],
)
def test_a_broker_url_is_accepted_where_kombu_reads_its_database(broker: str) -> None:
    assert CelerySettings.from_env({"CELERY_BROKER_URL": broker}).broker_url == broker


def test_an_unset_redis_url_is_what_the_embedded_services_module_decides() -> None:
    # redis://127.0.0.1:6379/0 when it answers (as on this machine), else an embedded Valkey's.
    expected = embedded.default_redis_url({})
    assert Settings.from_env(DATABASE).redis_url == expected
    assert CelerySettings.from_env({}).broker_url == expected
    # Set, the URL is taken as it is, answering or not.
    unused = "redis://127.0.0.1:1/0"
    assert Settings.from_env(DATABASE | {"OUTBOX_REDIS_URL": unused}).redis_url == unused


def test_a_database_the_server_does_not_have_is_one_line_naming_the_setting() -> None:
    assert str(missing_database(99, 16)) == (
        "database 99 does not exist on this server (it has 16; see OUTBOX_REDIS_URL)"
    )
    assert str(missing_database(99)) == (
        "database 99 does not exist on this server (see OUTBOX_REDIS_URL)"
    )
    assert isinstance(missing_database(99), ConfigError)


def test_the_password_of_a_refused_redis_url_is_never_quoted() -> None:
    for url in (
        "redis://:s3cret@127.0.0.1:6379/s3cret",
        "redis://127.0.0.1:6379/0?password=s3cret&db=s3cret",
        "redis://user:s3cret@127.0.0.1:6379/1?db=2&password=s3cret",
    ):
        with pytest.raises(ConfigError) as refused:
            check_environment({"OUTBOX_REDIS_URL": url})
        assert "s3cret" not in str(refused.value)
