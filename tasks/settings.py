"""Settings of the publisher, read from the environment once per process."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping

from sqlalchemy import URL

from models import env as settings_env
from models.db import database_url
from models.errors import ConfigError
from models.errors import preview as errors_preview
from models.producer import kick_by_default, max_payload_bytes
from tasks.drain import Limits
from tasks.purge import DEFAULT_RETENTION, duration_setting

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STREAM_PREFIX = "outbox:run:"
DEFAULT_QUEUED_PREFIX = "outbox:queued:"
DEFAULT_QUEUE = "celery"
DEFAULT_OUTBOX_QUEUE = "outbox"
# The schemes the sink's client (redis-py) accepts.
REDIS_SCHEMES = ("redis", "rediss", "unix")
# Kombu's transports (kombu.transport.TRANSPORT_ALIASES; a unit test keeps the two equal).
BROKER_SCHEMES = frozenset(
    {
        "SLMQ", "SQS", "amqp", "amqps", "azureservicebus", "azurestoragequeues",
        "confluentkafka", "consul", "etcd", "filesystem", "gcpubsub", "kafka", "librabbitmq",
        "memory", "mongodb", "pgmq", "pyamqp", "pyro", "qpid", "redis", "rediss", "sentinel",
        "slmq", "sqla", "sqlalchemy", "sqs", "zookeeper",
    }
)  # fmt: skip
# Celery's result backends (celery.app.backends.BACKEND_ALIASES; the same test keeps them).
RESULT_SCHEMES = frozenset(
    {
        "arangodb", "azureblockblob", "cache", "cassandra", "consul", "cosmosdbsql",
        "couchbase", "couchdb", "database", "db", "disabled", "dynamodb", "elasticsearch",
        "file", "gs", "mongodb", "redis", "rediss", "riak", "rpc", "s3", "sentinel",
    }
)  # fmt: skip
# Brokers that redeliver an unacknowledged message after CELERY_VISIBILITY_TIMEOUT. Not the
# Redis transport: with its ack emulation off (celeryconfig.py) nothing there reads it.
VISIBILITY_SCHEMES = frozenset({"sqs", "SQS"})

# The upper bound of each numeric setting (the lower bound is 1, or above 0 for seconds);
# the README's configuration table shows the same figures.
MAX_BATCH_SIZE = 100_000
MAX_BATCH_MAX_BYTES = 256 * 1024 * 1024
MAX_MAX_BATCHES = 10_000
MAX_MAX_ATTEMPTS = 1_000
MAX_GROUP_SIZE = 10_000
MAX_DISPATCH_LIMIT = 1_000_000
MAX_QUEUED_TTL = 86_400
MAX_KICK_SECONDS = 60.0  # OUTBOX_KICK_LINGER, OUTBOX_KICK_TIMEOUT
MAX_KICK_PAUSE = 3_600.0
MAX_REDIS_TIMEOUT = 3_600.0
MAX_DISPATCH_INTERVAL = 3_600.0
MAX_TASK_SECONDS = 86_400.0  # the Celery time limits
MAX_VISIBILITY_TIMEOUT = 7 * 86_400.0  # above the longest time limit
MAX_SHUTDOWN_TIMEOUT = 86_400.0  # OUTBOX_SHUTDOWN_TIMEOUT
LOG_FORMATS = ("text", "json")  # OUTBOX_LOG_FORMAT

# The numeric fields of Settings: each one's variable and upper bound.
INTEGER_SETTINGS = {
    "batch_size": ("OUTBOX_BATCH_SIZE", MAX_BATCH_SIZE),
    "batch_max_bytes": ("OUTBOX_BATCH_MAX_BYTES", MAX_BATCH_MAX_BYTES),
    "max_batches": ("OUTBOX_MAX_BATCHES", MAX_MAX_BATCHES),
    "max_attempts": ("OUTBOX_MAX_ATTEMPTS", MAX_MAX_ATTEMPTS),
    "group_size": ("OUTBOX_GROUP_SIZE", MAX_GROUP_SIZE),
    "dispatch_limit": ("OUTBOX_DISPATCH_LIMIT", MAX_DISPATCH_LIMIT),
    "queued_ttl": ("OUTBOX_QUEUED_TTL", MAX_QUEUED_TTL),
}
SECONDS_SETTINGS = {
    "kick_linger": ("OUTBOX_KICK_LINGER", MAX_KICK_SECONDS),
    "kick_timeout": ("OUTBOX_KICK_TIMEOUT", MAX_KICK_SECONDS),
    "kick_pause": ("OUTBOX_KICK_PAUSE", MAX_KICK_PAUSE),
    "redis_timeout": ("OUTBOX_REDIS_TIMEOUT", MAX_REDIS_TIMEOUT),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the drain, the tasks and the CLI need to know; see the README's table."""

    database_url: URL
    redis_url: str = DEFAULT_REDIS_URL
    stream_prefix: str = DEFAULT_STREAM_PREFIX
    queued_prefix: str = DEFAULT_QUEUED_PREFIX
    batch_size: int = Limits.batch_size
    batch_max_bytes: int = Limits.batch_max_bytes
    max_batches: int = Limits.max_batches
    max_attempts: int = Limits.max_attempts
    group_size: int = Limits.group_size
    dispatch_limit: int = Limits.dispatch_limit
    queued_ttl: int = 30
    kick_linger: float = 0.05
    kick_timeout: float = 0.05
    kick_pause: float = 5.0
    redis_timeout: float = 5.0
    retention: float = DEFAULT_RETENTION  # seconds a published event is kept (outbox.purge)
    # OUTBOX_REDIS_CLUSTER: True a Redis Cluster, False a single server, None: ask the server.
    redis_cluster: bool | None = None

    def __post_init__(self) -> None:
        # Settings made in code (tests, applications: `settings=` of the drain API) are held
        # to the bounds of the environment's: a batch size of 0 would drain nothing, forever.
        for field, (name, high) in INTEGER_SETTINGS.items():
            settings_env.check_integer(name, getattr(self, field), high=high)
        for field, (name, limit) in SECONDS_SETTINGS.items():
            settings_env.check_seconds(name, getattr(self, field), high=limit)
        # The kicked drain's wait is a blocking Redis call: the socket must outlast it.
        if self.kick_linger >= self.redis_timeout:
            raise ConfigError(
                f"OUTBOX_KICK_LINGER ({self.kick_linger}s) must be shorter than "
                f"OUTBOX_REDIS_TIMEOUT ({self.redis_timeout}s)"
            )
        # The same prefix would make a run's queued mark and its stream one key.
        if self.stream_prefix == self.queued_prefix:
            raise ConfigError(
                f"OUTBOX_STREAM_PREFIX and OUTBOX_QUEUED_PREFIX must differ, both are "
                f"{self.stream_prefix!r}"
            )
        # An empty hash tag first would hash the kicked set's three keys apart on a cluster,
        # where its scripts need them in one slot (tasks.redis_marks.KickedSet).
        brace = self.queued_prefix.find("{")
        if brace >= 0 and self.queued_prefix[brace + 1 : brace + 2] == "}":
            raise ConfigError(
                f"OUTBOX_QUEUED_PREFIX must not start a Redis Cluster hash tag with an empty "
                f"'{{}}', got {self.queued_prefix!r}"
            )
        if self.redis_cluster:
            problem = _cluster_url_problem(self.redis_url)
            if problem is not None:
                raise ConfigError(f"OUTBOX_REDIS_CLUSTER is on, so OUTBOX_REDIS_URL {problem}")

    @property
    def limits(self) -> Limits:
        """What bounds one drain."""
        return Limits(
            batch_size=self.batch_size,
            batch_max_bytes=self.batch_max_bytes,
            max_batches=self.max_batches,
            max_attempts=self.max_attempts,
            group_size=self.group_size,
            dispatch_limit=self.dispatch_limit,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: os.environ), refusing invalid values."""
        env = os.environ if environ is None else environ
        return cls(
            database_url=database_url(dict(env)),
            redis_url=settings_env.url(
                env, "OUTBOX_REDIS_URL", DEFAULT_REDIS_URL, kind="Redis", schemes=REDIS_SCHEMES
            ),
            stream_prefix=settings_env.text(env, "OUTBOX_STREAM_PREFIX", DEFAULT_STREAM_PREFIX),
            queued_prefix=settings_env.text(env, "OUTBOX_QUEUED_PREFIX", DEFAULT_QUEUED_PREFIX),
            batch_size=_int(env, "batch_size"),
            batch_max_bytes=_int(env, "batch_max_bytes"),
            max_batches=_int(env, "max_batches"),
            max_attempts=_int(env, "max_attempts"),
            group_size=_int(env, "group_size"),
            dispatch_limit=_int(env, "dispatch_limit"),
            queued_ttl=_int(env, "queued_ttl"),
            kick_linger=_seconds(env, "kick_linger"),
            kick_timeout=_seconds(env, "kick_timeout"),
            kick_pause=_seconds(env, "kick_pause"),
            redis_timeout=_seconds(env, "redis_timeout"),
            retention=duration_setting(env, "OUTBOX_RETENTION", cls.retention),
            redis_cluster=cluster_mode(env),
        )


def cluster_mode(env: Mapping[str, str]) -> bool | None:
    """OUTBOX_REDIS_CLUSTER: True (a Redis Cluster), False (one server) or None (unset: the
    publisher asks the server on its first call)."""
    if not env.get("OUTBOX_REDIS_CLUSTER"):
        return None
    return settings_env.flag(env, "OUTBOX_REDIS_CLUSTER", False)


def _cluster_url_problem(url: str) -> str | None:
    """What keeps ``url`` from naming a cluster node, if anything: a cluster client needs a
    host and port, and a cluster has database 0 only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return "must name a cluster node by host and port, not a unix socket"
    query = urllib.parse.parse_qs(parts.query)
    database = parts.path.strip("/") or (query.get("db") or ["0"])[0]
    if not (database.isdigit() and int(database) == 0):
        return "must use database 0 (a Redis Cluster has no other)"
    return None


def _int(env: Mapping[str, str], field: str) -> int:
    """The integer field of Settings read from its variable, within its bounds."""
    name, high = INTEGER_SETTINGS[field]
    default: int = getattr(Settings, field)
    return settings_env.integer(env, name, default, high=high)


def _seconds(env: Mapping[str, str], field: str) -> float:
    """The seconds field of Settings read from its variable, within its bounds."""
    name, high = SECONDS_SETTINGS[field]
    default: float = getattr(Settings, field)
    return settings_env.seconds(env, name, default, high=high)


@dataclasses.dataclass(frozen=True)
class CelerySettings:
    """What ``celeryconfig`` takes from the environment: the broker, the queue, the limits."""

    broker_url: str = DEFAULT_REDIS_URL
    result_backend: str | None = None
    default_queue: str = DEFAULT_QUEUE
    outbox_queue: str = DEFAULT_OUTBOX_QUEUE  # the outbox.* tasks' own queue
    visibility_timeout: float = 600.0
    soft_time_limit: float = 240.0
    time_limit: float = 300.0
    dispatch_interval: float = 1.0
    shutdown_timeout: float = 30.0  # a warm shutdown's wait for running drains (tasks.shutdown)
    log_format: str = "text"  # or "json": one JSON object per line (tasks.logs)

    def __post_init__(self) -> None:
        # A soft limit at or past the hard one never fires: the task is killed first, and
        # the drain's clean-up on the soft limit (put the kicked runs back) never runs.
        if self.soft_time_limit >= self.time_limit:
            raise ConfigError(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({self.soft_time_limit:g}s) must be below "
                f"CELERY_TASK_TIME_LIMIT ({self.time_limit:g}s)"
            )
        # An SQS broker hands an unacknowledged message to another worker after the
        # visibility timeout: below the time limit, a long drain would run twice at once.
        scheme = self.broker_url.partition("://")[0].partition("+")[0]
        if scheme in VISIBILITY_SCHEMES and self.visibility_timeout <= self.time_limit:
            raise ConfigError(
                f"CELERY_VISIBILITY_TIMEOUT ({self.visibility_timeout:g}s) must be above "
                f"CELERY_TASK_TIME_LIMIT ({self.time_limit:g}s)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CelerySettings:
        """Read them from ``environ`` (default: os.environ), refusing invalid values."""
        env = os.environ if environ is None else environ
        # The broker defaults to the sink's Redis: one Redis server is all a small setup needs.
        sink = settings_env.url(
            env, "OUTBOX_REDIS_URL", DEFAULT_REDIS_URL, kind="Redis", schemes=REDIS_SCHEMES
        )
        # Kombu's Redis transport cannot use a Redis Cluster: that default would not work.
        if cluster_mode(env) and not env.get("CELERY_BROKER_URL"):
            raise ConfigError(
                "CELERY_BROKER_URL must be set when OUTBOX_REDIS_CLUSTER is on: Celery's "
                "broker cannot be a Redis Cluster, so it cannot default to OUTBOX_REDIS_URL"
            )
        backend = settings_env.url(
            env,
            "CELERY_RESULT_BACKEND",
            "",
            kind="result backend",
            schemes=RESULT_SCHEMES,
            shown="redis://, rediss://, rpc://, db+postgresql://, ... (Celery's backends)",
        )
        return cls(
            broker_url=settings_env.url(
                env,
                "CELERY_BROKER_URL",
                sink,
                kind="broker",
                schemes=BROKER_SCHEMES,
                shown="amqp://, pyamqp://, redis://, rediss://, sentinel://, sqs://, ... "
                "(Kombu's transports)",
                failover=True,
            ),
            result_backend=backend or None,
            default_queue=settings_env.text(env, "CELERY_TASK_DEFAULT_QUEUE", DEFAULT_QUEUE),
            outbox_queue=settings_env.text(env, "OUTBOX_QUEUE", DEFAULT_OUTBOX_QUEUE),
            visibility_timeout=settings_env.seconds(
                env,
                "CELERY_VISIBILITY_TIMEOUT",
                cls.visibility_timeout,
                high=MAX_VISIBILITY_TIMEOUT,
            ),
            soft_time_limit=settings_env.seconds(
                env, "CELERY_TASK_SOFT_TIME_LIMIT", cls.soft_time_limit, high=MAX_TASK_SECONDS
            ),
            time_limit=settings_env.seconds(
                env, "CELERY_TASK_TIME_LIMIT", cls.time_limit, high=MAX_TASK_SECONDS
            ),
            dispatch_interval=settings_env.seconds(
                env, "OUTBOX_DISPATCH_INTERVAL", cls.dispatch_interval, high=MAX_DISPATCH_INTERVAL
            ),
            shutdown_timeout=settings_env.seconds(
                env, "OUTBOX_SHUTDOWN_TIMEOUT", cls.shutdown_timeout, high=MAX_SHUTDOWN_TIMEOUT
            ),
            log_format=log_format(env),
        )


def log_format(env: Mapping[str, str]) -> str:
    """OUTBOX_LOG_FORMAT: ``text`` (Celery's own lines) or ``json`` (one object per line)."""
    raw = settings_env.text(env, "OUTBOX_LOG_FORMAT", LOG_FORMATS[0])
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"OUTBOX_LOG_FORMAT must be text or json, got {errors_preview(raw)}")
    return value


def metrics_dir(env: Mapping[str, str]) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, if set: a directory this process can write its metrics to.

    prometheus_client writes there from the first metric a process counts; a directory that
    is missing would fail every drain instead of the start-up.
    """
    path = env.get("PROMETHEUS_MULTIPROC_DIR") or None
    if path is not None and not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR must name an existing directory this process can write "
            f"to, got {errors_preview(path)}"
        )
    return path


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Read every setting the project has, raising ConfigError for the first invalid one.

    What the worker, beat and each ``outbox`` command do first, so that a bad value stops
    them at start-up with one line, instead of failing every task or command later.
    """
    env = dict(os.environ if environ is None else environ)
    Settings.from_env(env)
    CelerySettings.from_env(env)
    max_payload_bytes(env)
    kick_by_default(env)
    metrics_dir(env)
