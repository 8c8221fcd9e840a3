"""Settings of the publisher, read from the environment once per process."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import URL

from models import env as settings_env
from models.db import DEFAULT_DATABASE_URL, database_url
from models.errors import ConfigError
from models.errors import preview as errors_preview
from models.producer import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    KICK_ENV,
    MAX_MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES_ENV,
    kick_by_default,
    max_payload_bytes,
)
from tasks import retry
from tasks.drain import Limits
from tasks.purge import DEFAULT_RETENTION, DURATION_FORMS, duration_setting

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
# the configuration page (docs/configuration.md), generated from SETTINGS, shows them.
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
MAX_OUTAGE_CHECK = 3_600.0
MAX_DISPATCH_INTERVAL = 3_600.0
MAX_TASK_SECONDS = 86_400.0  # the Celery time limits
MAX_VISIBILITY_TIMEOUT = 7 * 86_400.0  # above the longest time limit
MAX_SHUTDOWN_TIMEOUT = 86_400.0  # OUTBOX_SHUTDOWN_TIMEOUT
LOG_FORMATS = ("text", "json")  # OUTBOX_LOG_FORMAT


@dataclasses.dataclass(frozen=True)
class Setting:
    """One environment variable the project reads, as the configuration page shows it."""

    variable: str  # "OUTBOX_BATCH_SIZE"
    kind: str  # "integer", "seconds", "flag", "text", "URL", "duration", "choice", "path"
    default: str  # as shown to a user ("100", "redis://127.0.0.1:6379/0", "unset")
    accepts: str  # "1 to 100000", "redis://, rediss://, unix://", "text or json"
    doc: str  # one line: what it does


@dataclasses.dataclass(frozen=True)
class Number:
    """A numeric field of Settings or CelerySettings: the one declaration its reading, its
    check and its row of SETTINGS come from (the default is the field's own)."""

    field: str
    variable: str
    high: int | float  # the lower bound is 1, or above 0 for seconds
    doc: str
    note: str = ""  # appended to what it accepts: " (256 MiB)", "; below ..."

    def setting(self, kind: str, default: float) -> Setting:
        """Its row of SETTINGS: ``kind`` is "integer" or "seconds"."""
        high, low = _shown(self.high), "1 to" if kind == "integer" else "above 0, at most"
        unit = "" if kind == "integer" else " seconds"
        return Setting(
            self.variable, kind, _shown(default), f"{low} {high}{unit}{self.note}", self.doc
        )


def _shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(number)


INTEGERS = (
    Number(
        "batch_size",
        "OUTBOX_BATCH_SIZE",
        MAX_BATCH_SIZE,
        "at most this many events in one batch (one transaction, one Redis round trip)",
    ),
    Number(
        "batch_max_bytes",
        "OUTBOX_BATCH_MAX_BYTES",
        MAX_BATCH_MAX_BYTES,
        "a run's batch stops once its types and payloads reach this size (UTF-8 bytes)",
        " (256 MiB)",
    ),
    Number(
        "max_batches",
        "OUTBOX_MAX_BATCHES",
        MAX_MAX_BATCHES,
        "batches per drain task before it returns more and queues a follow-up",
    ),
    Number(
        "max_attempts",
        "OUTBOX_MAX_ATTEMPTS",
        MAX_MAX_ATTEMPTS,
        "publishes the sink refuses before a run is parked stalled (outages never count)",
    ),
    Number(
        "group_size",
        "OUTBOX_GROUP_SIZE",
        MAX_GROUP_SIZE,
        "runs drained together, per task that dispatch queues and per kicked group",
    ),
    Number(
        "dispatch_limit",
        "OUTBOX_DISPATCH_LIMIT",
        MAX_DISPATCH_LIMIT,
        "at most this many pending runs looked at per dispatch pass",
    ),
    Number(
        "queued_ttl",
        "OUTBOX_QUEUED_TTL",
        MAX_QUEUED_TTL,
        "seconds before a queued-drain mark expires: how long a lost drain holds a run back",
    ),
)
SECONDS = (
    Number(
        "kick_linger",
        "OUTBOX_KICK_LINGER",
        MAX_KICK_SECONDS,
        "seconds outbox.drain_kicked waits for another kick once its set is empty",
        "; below OUTBOX_REDIS_TIMEOUT",
    ),
    Number(
        "kick_timeout",
        "OUTBOX_KICK_TIMEOUT",
        MAX_KICK_SECONDS,
        "seconds a kick may wait for Redis or the broker, on the producer's commit path",
    ),
    Number(
        "kick_pause",
        "OUTBOX_KICK_PAUSE",
        MAX_KICK_PAUSE,
        "seconds kicks are skipped after one failed (beat's dispatch drains the runs)",
    ),
    Number(
        "redis_timeout",
        "OUTBOX_REDIS_TIMEOUT",
        MAX_REDIS_TIMEOUT,
        "socket and connect timeout, in seconds, for the sink's Redis",
    ),
    Number(
        "outage_check_max",
        "OUTBOX_OUTAGE_CHECK_MAX",
        MAX_OUTAGE_CHECK,
        "longest seconds between dispatch's checks of a sink that is down (after 1, 2, 4, ...)",
    ),
)
CELERY_SECONDS = (
    Number(
        "visibility_timeout",
        "CELERY_VISIBILITY_TIMEOUT",
        MAX_VISIBILITY_TIMEOUT,
        "seconds before an SQS broker redelivers an unacknowledged message",
        "; above CELERY_TASK_TIME_LIMIT on SQS",
    ),
    Number(
        "soft_time_limit",
        "CELERY_TASK_SOFT_TIME_LIMIT",
        MAX_TASK_SECONDS,
        "seconds before a task gets a soft time limit exception",
        "; below CELERY_TASK_TIME_LIMIT",
    ),
    Number(
        "time_limit",
        "CELERY_TASK_TIME_LIMIT",
        MAX_TASK_SECONDS,
        "seconds before a task's process is killed",
    ),
    Number(
        "dispatch_interval",
        "OUTBOX_DISPATCH_INTERVAL",
        MAX_DISPATCH_INTERVAL,
        "seconds between beat's outbox.dispatch runs",
    ),
    Number(
        "shutdown_timeout",
        "OUTBOX_SHUTDOWN_TIMEOUT",
        MAX_SHUTDOWN_TIMEOUT,
        "seconds a worker's warm shutdown waits for a drain stuck inside a batch",
    ),
)

# The numeric fields of Settings: each one's variable and upper bound.
INTEGER_SETTINGS: dict[str, tuple[str, int]] = {
    number.field: (number.variable, int(number.high)) for number in INTEGERS
}
SECONDS_SETTINGS: dict[str, tuple[str, float]] = {
    number.field: (number.variable, float(number.high)) for number in SECONDS
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the drain, the tasks and the CLI need to know; see docs/configuration.md."""

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
    outage_check_max: float = retry.OUTAGE_MAX_DELAY
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
        fields: dict[str, Any] = {
            "database_url": database_url(dict(env)),
            "redis_url": redis_url(env),
            "stream_prefix": settings_env.text(env, "OUTBOX_STREAM_PREFIX", DEFAULT_STREAM_PREFIX),
            "queued_prefix": settings_env.text(env, "OUTBOX_QUEUED_PREFIX", DEFAULT_QUEUED_PREFIX),
        }
        fields |= _numbers(env, cls, INTEGERS, settings_env.integer)
        fields |= _numbers(env, cls, SECONDS, settings_env.seconds)
        return cls(
            **fields,
            retention=duration_setting(env, "OUTBOX_RETENTION", cls.retention),
            redis_cluster=cluster_mode(env),
        )


def redis_url(env: Mapping[str, str]) -> str:
    """OUTBOX_REDIS_URL: a Redis URL whose database is plain digits; when unset, the local
    server's (``redis://127.0.0.1:6379/0``) if it answers, else a running embedded Valkey's."""
    url = settings_env.redis_url(env, "OUTBOX_REDIS_URL", "", schemes=REDIS_SCHEMES)
    return url or default_redis_url(env)


def default_redis_url(env: Mapping[str, str]) -> str:
    """What OUTBOX_REDIS_URL means when unset (``models.embedded`` decides, and memoizes)."""
    try:
        from models import embedded  # type: ignore[attr-defined, unused-ignore]
    except ImportError:  # the embedded servers' module is optional
        return DEFAULT_REDIS_URL
    url: str = embedded.default_redis_url(env)
    return url


def _numbers(
    env: Mapping[str, str],
    owner: type[object],
    numbers: tuple[Number, ...],
    read: Callable[..., float],
) -> dict[str, Any]:
    """The fields ``numbers`` of ``owner`` (Settings, CelerySettings), each read from its
    variable with ``read`` (``models.env.integer`` or ``seconds``), within its bounds."""
    return {
        number.field: read(env, number.variable, getattr(owner, number.field), high=number.high)
        for number in numbers
    }


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
        sink = settings_env.redis_url(env, "OUTBOX_REDIS_URL", "", schemes=REDIS_SCHEMES)
        if not sink and not env.get("CELERY_BROKER_URL"):
            sink = default_redis_url(env)  # asked only when it is the broker's default
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
        broker = settings_env.url(
            env,
            "CELERY_BROKER_URL",
            sink,
            kind="broker",
            schemes=BROKER_SCHEMES,
            shown="amqp://, pyamqp://, redis://, rediss://, sentinel://, sqs://, ... "
            "(Kombu's transports)",
            failover=True,
        )
        if env.get("CELERY_BROKER_URL"):
            _check_broker_databases(broker)
        return cls(
            broker_url=broker,
            result_backend=backend or None,
            default_queue=settings_env.text(env, "CELERY_TASK_DEFAULT_QUEUE", DEFAULT_QUEUE),
            outbox_queue=settings_env.text(env, "OUTBOX_QUEUE", DEFAULT_OUTBOX_QUEUE),
            **_numbers(env, cls, CELERY_SECONDS, settings_env.seconds),
            log_format=log_format(env),
        )


def _check_broker_databases(broker: str) -> None:
    """A ``redis://`` or ``rediss://`` broker's path must name its database as Kombu reads
    it, which refuses a path such as ``/abc`` only when it first connects."""
    for part in broker.split(";"):
        member = part.strip()
        if member.partition("://")[0] in ("redis", "rediss"):
            problem = settings_env.kombu_redis_database_problem(member)
            if problem is not None:
                raise ConfigError(f"CELERY_BROKER_URL is not a valid broker URL: {problem}")


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


_REDIS_ACCEPTS = (
    "redis://, rediss://, unix://; the database as /N or ?db=N (digits; a unix:// socket: "
    "?db=N only); with OUTBOX_REDIS_CLUSTER=1, a host and port and database 0"
)
_TEXT = "printable text, 1 to 200 characters"
_FLAG = "1/0, true/false, yes/no, on/off, in any case"
TEST_ONLY = "test-only: "  # how the doc of a setting only the test suite reads begins


def _declared() -> tuple[Setting, ...]:
    return (
        Setting(
            "OUTBOX_DATABASE_URL",
            "URL",
            f"{DEFAULT_DATABASE_URL}, else an embedded PostgreSQL's",
            "a SQLAlchemy URL with the postgresql+psycopg or postgresql driver, port 1 to 65535",
            "the PostgreSQL database that holds the outbox tables",
        ),
        Setting(
            "OUTBOX_REDIS_URL",
            "URL",
            f"{DEFAULT_REDIS_URL}, else an embedded Valkey's",
            _REDIS_ACCEPTS,
            "the sink: the Redis server (or any node of a Redis Cluster) that holds the streams",
        ),
        Setting(
            "OUTBOX_REDIS_CLUSTER",
            "flag",
            "unset",
            f"{_FLAG}; unset: the first call asks the server (INFO cluster)",
            "whether OUTBOX_REDIS_URL is a Redis Cluster node (1) or a single server (0)",
        ),
        Setting(
            "OUTBOX_STREAM_PREFIX",
            "text",
            DEFAULT_STREAM_PREFIX,
            f"{_TEXT}; not equal to OUTBOX_QUEUED_PREFIX",
            "stream key prefix: a run's stream is <prefix><run_id>",
        ),
        Setting(
            "OUTBOX_QUEUED_PREFIX",
            "text",
            DEFAULT_QUEUED_PREFIX,
            f"{_TEXT}; not starting a hash tag with an empty {{}}",
            "key prefix of the queued-drain marks (<prefix><run_id>) and the kicked set",
        ),
        *(number.setting("integer", getattr(Settings, number.field)) for number in INTEGERS),
        *(number.setting("seconds", getattr(Settings, number.field)) for number in SECONDS),
        Setting(
            "OUTBOX_RETENTION",
            "duration",
            "7d",
            f"seconds, or a number with s, m, h or d ({DURATION_FORMS}); above 0, at most 36500d",
            "how long published events are kept before outbox.purge deletes them",
        ),
        Setting(
            MAX_PAYLOAD_BYTES_ENV,
            "integer",
            str(DEFAULT_MAX_PAYLOAD_BYTES),
            f"1 to {MAX_MAX_PAYLOAD_BYTES} (64 MiB)",
            "largest payload append_event accepts, measured as compact UTF-8 JSON",
        ),
        Setting(
            KICK_ENV,
            "flag",
            "0",
            _FLAG,
            "whether append_event kicks a drain on commit unless told kick=False",
        ),
        Setting(
            "CELERY_BROKER_URL",
            "URL",
            "OUTBOX_REDIS_URL",
            "a URL of a transport Kombu knows (amqp://, pyamqp://, redis://, rediss://, "
            "sentinel://, sqs://, ...); several separated by ; for failover",
            "Celery's broker (never a Redis Cluster: set it when the sink is one)",
        ),
        Setting(
            "CELERY_RESULT_BACKEND",
            "URL",
            "unset",
            "a URL of a result backend Celery knows (redis://, rpc://, db+postgresql://, ...)",
            "Celery's result backend (unset: no results are stored)",
        ),
        Setting(
            "CELERY_TASK_DEFAULT_QUEUE",
            "text",
            DEFAULT_QUEUE,
            _TEXT,
            "the application's default queue, for tasks that are not the outbox's",
        ),
        Setting(
            "OUTBOX_QUEUE",
            "text",
            DEFAULT_OUTBOX_QUEUE,
            _TEXT,
            "the queue of the outbox tasks (outbox.*); workers must consume it",
        ),
        *(
            number.setting("seconds", getattr(CelerySettings, number.field))
            for number in CELERY_SECONDS
        ),
        Setting(
            "OUTBOX_LOG_FORMAT",
            "choice",
            LOG_FORMATS[0],
            "text or json, in any case",
            "json: the worker and beat write each log record as one JSON object",
        ),
        Setting(
            "PROMETHEUS_MULTIPROC_DIR",
            "path",
            "unset",
            "an existing directory the process may write to",
            "prometheus_client's: where each process writes its metrics, for outbox metrics",
        ),
        Setting(
            "OUTBOX_SERVICES_DIR",
            "path",
            "${XDG_STATE_HOME:-~/.local/state}/outbox",
            "a directory path",
            "where the embedded servers keep their data",
        ),
        Setting(
            "OUTBOX_TEST_DATABASE_URL",
            "URL",
            "unset",
            "a PostgreSQL URL, as OUTBOX_DATABASE_URL",
            f"{TEST_ONLY}the PostgreSQL server the test suite creates its databases on",
        ),
        Setting(
            "OUTBOX_TEST_REDIS_URL",
            "URL",
            "unset",
            "a Redis URL, as OUTBOX_REDIS_URL",
            f"{TEST_ONLY}the Redis server the test suite uses",
        ),
    )


# Every environment variable the project reads, once: the configuration page is generated
# from it, and a unit test checks that the code reads no variable missing here.
SETTINGS: tuple[Setting, ...] = _declared()
