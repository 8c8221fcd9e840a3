"""Invalid settings: each case is an environment and the one line that refuses it.

The line is what follows ``Error: `` on stderr, from the worker, beat and every `outbox`
command alike, and the message of the ConfigError that ``check_environment`` raises. The
bounds below are the contract (docs/configuration.md says the same); the code must match them.
Cases marked ``processes`` also run against real `celery worker` and `celery beat` processes:
at least one per variable, and every value that the reliability issue reported.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EnvCase:
    """Run with ``env`` (over an otherwise valid environment), and be refused with ``message``."""

    id: str
    env: dict[str, str]
    message: str
    processes: bool = False  # also start a real worker and beat with it


# The upper bound of every numeric setting (the lower one is 1, or above 0 for seconds).
INTEGERS = {
    "OUTBOX_BATCH_SIZE": 100_000,
    "OUTBOX_BATCH_MAX_BYTES": 268_435_456,
    "OUTBOX_MAX_BATCHES": 10_000,
    "OUTBOX_MAX_ATTEMPTS": 1_000,
    "OUTBOX_GROUP_SIZE": 10_000,
    "OUTBOX_DISPATCH_LIMIT": 1_000_000,
    "OUTBOX_QUEUED_TTL": 86_400,
    "OUTBOX_MAX_PAYLOAD_BYTES": 67_108_864,
}
SECONDS = {
    "OUTBOX_KICK_LINGER": 60,
    "OUTBOX_KICK_TIMEOUT": 60,
    "OUTBOX_KICK_PAUSE": 3_600,
    "OUTBOX_REDIS_TIMEOUT": 3_600,
    "OUTBOX_OUTAGE_CHECK_MAX": 3_600,
    "OUTBOX_DISPATCH_INTERVAL": 3_600,
    "CELERY_VISIBILITY_TIMEOUT": 604_800,
    "CELERY_TASK_SOFT_TIME_LIMIT": 86_400,
    "CELERY_TASK_TIME_LIMIT": 86_400,
    "OUTBOX_SHUTDOWN_TIMEOUT": 86_400,
}

# Besides 0, nan and one above the bound, which every numeric setting gets, one more each, so
# that every kind of wrong number is refused somewhere.
_MORE_INTEGERS = {
    "OUTBOX_BATCH_SIZE": "100000000000000000000",  # a database error before
    "OUTBOX_BATCH_MAX_BYTES": "-1",
    "OUTBOX_MAX_BATCHES": "1.5",
    "OUTBOX_MAX_ATTEMPTS": "1e3",
    "OUTBOX_GROUP_SIZE": "ten",
    "OUTBOX_DISPATCH_LIMIT": "1_000",
    "OUTBOX_QUEUED_TTL": "inf",
    "OUTBOX_MAX_PAYLOAD_BYTES": " ",
}
_MORE_SECONDS = {
    "OUTBOX_KICK_LINGER": "-0.01",
    "OUTBOX_KICK_TIMEOUT": "inf",
    "OUTBOX_KICK_PAUSE": "5s",
    "OUTBOX_REDIS_TIMEOUT": "1e999",
    "OUTBOX_OUTAGE_CHECK_MAX": "15s",
    "OUTBOX_DISPATCH_INTERVAL": "-inf",
    "CELERY_VISIBILITY_TIMEOUT": "Infinity",
    "CELERY_TASK_SOFT_TIME_LIMIT": "0x10",
    "CELERY_TASK_TIME_LIMIT": "1_0",
    "OUTBOX_SHUTDOWN_TIMEOUT": "-30",
}
# Every other kind of wrong value, for the settings of the graceful shutdown, the log format
# and retention: infinite, a word, blank, huge. (An empty value is not wrong: it means the
# default, as it does for every setting.)
HUGE = "9" * 5000
_WRONG_KINDS = ("inf", "thirty", " ", HUGE)
_LOG_FORMATS = ("nan", "inf", "-1", "xml", "jsonl", "text,json", " ")
_DURATIONS = ("nan", "inf", "-1", "-1d", "7x", "7D", "1e3", "seven days", " ", "1e999", " 7d")


def quoted(value: str) -> str:
    """``value`` as a message quotes it: at most its first 60 characters."""
    return f"{value[:60]!r}... ({len(value)} characters)" if len(value) > 60 else repr(value)


def _label(value: str) -> str:
    """``value`` as a case's id shows it: as it is when that is plain, else quoted."""
    plain = len(value) <= 60 and value.isprintable() and " " not in value and "," not in value
    return value if plain and value else quoted(value)


# Integers are plain digits and seconds plain decimals, exactly: no sign on an integer, no
# whitespace around either (issue 13: `OUTBOX_BATCH_SIZE=' 10'` was taken as 10).
_SPACED_INTEGERS = {
    "OUTBOX_BATCH_SIZE": (" 10", "10 ", "\t10", "10\n", "+10"),
    "OUTBOX_MAX_ATTEMPTS": ("+5", " 5 "),
    "OUTBOX_MAX_PAYLOAD_BYTES": ("1024\n",),
}
_SPACED_SECONDS = {
    "OUTBOX_DISPATCH_INTERVAL": (" 1", "1 ", "\t0.5"),
    "CELERY_TASK_TIME_LIMIT": ("300\n",),
    "OUTBOX_KICK_PAUSE": (" +.5",),
}

# The values the issue reported as accepted and failing later.
_REPORTED = {
    ("OUTBOX_BATCH_SIZE", "0"),
    ("OUTBOX_BATCH_SIZE", "100000000000000000000"),
    ("OUTBOX_BATCH_SIZE", " 10"),
}


def _integer_cases() -> list[EnvCase]:
    cases = []
    for name, high in INTEGERS.items():
        for value in (
            "0",
            "nan",
            str(high + 1),
            _MORE_INTEGERS[name],
            *_SPACED_INTEGERS.get(name, ()),
        ):
            cases.append(
                EnvCase(
                    f"{name}={_label(value)}",
                    {name: value},
                    f"{name} must be an integer from 1 to {high}, got {value!r}",
                    processes=value == "nan" or (name, value) in _REPORTED,
                )
            )
    return cases


def _seconds_cases() -> list[EnvCase]:
    cases = []
    for name, high in SECONDS.items():
        values = ["0", "nan", str(high + 1), _MORE_SECONDS[name], *_SPACED_SECONDS.get(name, ())]
        if name == "OUTBOX_SHUTDOWN_TIMEOUT":
            values += _WRONG_KINDS
        for value in values:
            cases.append(
                EnvCase(
                    f"{name}={_label(value)}",
                    {name: value},
                    f"{name} must be a number of seconds above 0 and at most {high}, "
                    f"got {quoted(value)}",
                    processes=value in ("nan", "inf"),
                )
            )
    return cases


def _log_format_cases() -> list[EnvCase]:
    cases = [
        EnvCase(
            f"OUTBOX_LOG_FORMAT={_label(value)}",
            {"OUTBOX_LOG_FORMAT": value},
            f"OUTBOX_LOG_FORMAT must be text or json, got {value!r}",
            processes=value == "xml",
        )
        for value in _LOG_FORMATS
    ]
    # Text is printable and at most 200 characters before it is compared with the formats.
    for value in (HUGE, "json\n"):
        cases.append(
            EnvCase(
                f"OUTBOX_LOG_FORMAT={_label(value)}",
                {"OUTBOX_LOG_FORMAT": value},
                f"OUTBOX_LOG_FORMAT {_PRINTABLE}, got {quoted(value)}",
            )
        )
    return cases


def _retention_cases() -> list[EnvCase]:
    forms = "must be a duration such as 90, 30s, 15m, 12h or 7d"
    cases = [
        EnvCase(
            f"OUTBOX_RETENTION={_label(value)}",
            {"OUTBOX_RETENTION": value},
            f"OUTBOX_RETENTION {forms}, got {value!r}",
            processes=value == "nan",
        )
        for value in _DURATIONS
    ]
    for value, why in (
        ("0", "must be a duration longer than zero"),
        ("0d", "must be a duration longer than zero"),
        ("36501d", "must be a duration of at most 36500d"),
        (HUGE, "must be a duration of at most 36500d"),  # digits alone: seconds, too many
    ):
        cases.append(
            EnvCase(
                f"OUTBOX_RETENTION={_label(value)}",
                {"OUTBOX_RETENTION": value},
                f"OUTBOX_RETENTION {why}, got {quoted(value)}",
                processes=value == "0",
            )
        )
    return cases


_REDIS_SCHEMES = "(redis://, rediss://, unix://)"
_BROKER_SCHEMES = (
    "(amqp://, pyamqp://, redis://, rediss://, sentinel://, sqs://, ... (Kombu's transports))"
)
_BACKEND_SCHEMES = "(redis://, rediss://, rpc://, db+postgresql://, ... (Celery's backends))"
_PORT = "its host and port cannot be read (the port must be a number up to 65535)"
_PRINTABLE = "must be printable text of at most 200 characters"
_DATABASE_PATH = "its path must be empty, / or a database number such as /0"
_DATABASE_QUERY = "its db= query must be a database number such as db=0"

OTHER_CASES = [
    # URLs: the scheme is named, never the rest, which may hold a password.
    EnvCase(
        "OUTBOX_REDIS_URL=http://...",
        {"OUTBOX_REDIS_URL": "http://user:s3cret@127.0.0.1:6379/0"},
        "OUTBOX_REDIS_URL is not a valid Redis URL: Redis URL must specify one of the "
        f"following schemes {_REDIS_SCHEMES}, got 'http://'",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_REDIS_URL without a scheme",
        {"OUTBOX_REDIS_URL": "127.0.0.1:6379"},
        "OUTBOX_REDIS_URL is not a valid Redis URL: Redis URL must specify one of the "
        f"following schemes {_REDIS_SCHEMES}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a port that is no number",
        {"OUTBOX_REDIS_URL": "redis://:s3cret@127.0.0.1:port/0"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_PORT}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a port out of range",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:99999/0"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_PORT}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a space",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379/0 redis://other"},
        "OUTBOX_REDIS_URL is not a valid Redis URL: it contains spaces or control characters",
    ),
    # The database of a Redis URL: redis-py used database 0 for a path it could not read.
    EnvCase(
        "OUTBOX_REDIS_URL with a database that is no number",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379/abc"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_PATH}",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with more path after the database",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379/7/extra"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_PATH}",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_REDIS_URL rediss:// with a database that is no number",
        {"OUTBOX_REDIS_URL": "rediss://:s3cret@127.0.0.1:6380/s3cret"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_PATH}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a signed database",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379/-1"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_PATH}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a database of 5,000 digits",
        {"OUTBOX_REDIS_URL": f"redis://127.0.0.1:6379/{HUGE}"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_PATH}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a database above 2147483647",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379/2147483648"},
        "OUTBOX_REDIS_URL is not a valid Redis URL: its database number must be at most 2147483647",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a db= query that is no number",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379?db=abc&password=s3cret"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_QUERY}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with a db= query with a space",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379/?db=%201"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_QUERY}",
    ),
    EnvCase(
        "OUTBOX_REDIS_URL with one database in the path and another in the query",
        {"OUTBOX_REDIS_URL": "redis://127.0.0.1:6379/1?db=2"},
        "OUTBOX_REDIS_URL is not a valid Redis URL: it names database 1 in its path and 2 "
        "in its db= query",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_REDIS_URL unix:// with a db= query that is no number",
        {"OUTBOX_REDIS_URL": "unix:///run/redis/redis.sock?db=one"},
        f"OUTBOX_REDIS_URL is not a valid Redis URL: {_DATABASE_QUERY}",
    ),
    EnvCase(
        "CELERY_BROKER_URL redis:// with a database that is no number",
        {"CELERY_BROKER_URL": "redis://:s3cret@127.0.0.1:6379/abc"},
        f"CELERY_BROKER_URL is not a valid broker URL: {_DATABASE_PATH}",
        processes=True,
    ),
    EnvCase(
        "CELERY_BROKER_URL failover list with a bad database",
        {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0;rediss://127.0.0.1:6380/0/1"},
        f"CELERY_BROKER_URL is not a valid broker URL: {_DATABASE_PATH}",
    ),
    EnvCase(
        "CELERY_BROKER_URL=nonsense",
        {"CELERY_BROKER_URL": "nonsense"},
        "CELERY_BROKER_URL is not a valid broker URL: broker URL must specify one of the "
        f"following schemes {_BROKER_SCHEMES}",
        processes=True,
    ),
    EnvCase(
        "CELERY_BROKER_URL=http://...",
        {"CELERY_BROKER_URL": "http://guest:s3cret@127.0.0.1:5672//"},
        "CELERY_BROKER_URL is not a valid broker URL: broker URL must specify one of the "
        f"following schemes {_BROKER_SCHEMES}, got 'http://'",
    ),
    EnvCase(
        "CELERY_BROKER_URL failover list with a bad member",
        {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0;ftp://127.0.0.1"},
        "CELERY_BROKER_URL is not a valid broker URL: broker URL must specify one of the "
        f"following schemes {_BROKER_SCHEMES}, got 'ftp://'",
    ),
    EnvCase(
        "CELERY_BROKER_URL with a port that is no number",
        {"CELERY_BROKER_URL": "amqp://guest:s3cret@127.0.0.1:amqp//"},
        f"CELERY_BROKER_URL is not a valid broker URL: {_PORT}",
    ),
    EnvCase(
        "CELERY_RESULT_BACKEND=nonsense://",
        {"CELERY_RESULT_BACKEND": "nonsense://127.0.0.1"},
        "CELERY_RESULT_BACKEND is not a valid result backend URL: result backend URL must "
        f"specify one of the following schemes {_BACKEND_SCHEMES}, got 'nonsense://'",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_DATABASE_URL=mysql://...",
        {"OUTBOX_DATABASE_URL": "mysql://root:s3cret@127.0.0.1/outbox"},
        "OUTBOX_DATABASE_URL must use PostgreSQL with the psycopg 3 driver "
        "(postgresql+psycopg://...), got driver 'mysql'",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_DATABASE_URL with a port that is no number",
        {"OUTBOX_DATABASE_URL": "postgresql://postgres:s3cret@127.0.0.1:pg/outbox"},
        "OUTBOX_DATABASE_URL is not a valid SQLAlchemy URL "
        "(postgresql+psycopg://user:password@host:5432/database)",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_DATABASE_URL with a port out of range",
        {"OUTBOX_DATABASE_URL": "postgresql://postgres@127.0.0.1:70000/outbox"},
        "OUTBOX_DATABASE_URL must have a port from 1 to 65535",
    ),
    EnvCase(
        "OUTBOX_DATABASE_URL that is no URL",
        {"OUTBOX_DATABASE_URL": "host=127.0.0.1 dbname=outbox"},
        "OUTBOX_DATABASE_URL is not a valid SQLAlchemy URL "
        "(postgresql+psycopg://user:password@host:5432/database)",
    ),
    # Text: key prefixes and the queue name.
    EnvCase(
        "OUTBOX_STREAM_PREFIX with a newline",
        {"OUTBOX_STREAM_PREFIX": "outbox\n:run:"},
        f"OUTBOX_STREAM_PREFIX {_PRINTABLE}, got 'outbox\\n:run:'",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_STREAM_PREFIX of 201 characters",
        {"OUTBOX_STREAM_PREFIX": "p" * 201},
        f"OUTBOX_STREAM_PREFIX {_PRINTABLE}, got {'p' * 60!r}... (201 characters)",
    ),
    EnvCase(
        "OUTBOX_STREAM_PREFIX with bytes that are not UTF-8",
        {"OUTBOX_STREAM_PREFIX": "run:\udcff"},  # byte 0xff, as Python reads the environment
        f"OUTBOX_STREAM_PREFIX {_PRINTABLE}, got 'run:\\udcff'",
    ),
    EnvCase(
        "OUTBOX_QUEUED_PREFIX with a tab",
        {"OUTBOX_QUEUED_PREFIX": "queued\t"},
        f"OUTBOX_QUEUED_PREFIX {_PRINTABLE}, got 'queued\\t'",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_STREAM_PREFIX equal to OUTBOX_QUEUED_PREFIX",
        {"OUTBOX_STREAM_PREFIX": "outbox:", "OUTBOX_QUEUED_PREFIX": "outbox:"},
        "OUTBOX_STREAM_PREFIX and OUTBOX_QUEUED_PREFIX must differ, both are 'outbox:'",
        processes=True,
    ),
    EnvCase(
        "CELERY_TASK_DEFAULT_QUEUE with an escape sequence",
        {"CELERY_TASK_DEFAULT_QUEUE": "queue\x1b[31m"},
        f"CELERY_TASK_DEFAULT_QUEUE {_PRINTABLE}, got 'queue\\x1b[31m'",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_QUEUE with a newline",
        {"OUTBOX_QUEUE": "outbox\n"},
        f"OUTBOX_QUEUE {_PRINTABLE}, got 'outbox\\n'",
        processes=True,
    ),
    # Flags.
    EnvCase(
        "OUTBOX_KICK_ON_COMMIT=maybe",
        {"OUTBOX_KICK_ON_COMMIT": "maybe"},
        "OUTBOX_KICK_ON_COMMIT must be 1/0, true/false, yes/no or on/off, got 'maybe'",
        processes=True,
    ),
    EnvCase(
        "OUTBOX_KICK_ON_COMMIT=2",
        {"OUTBOX_KICK_ON_COMMIT": "2"},
        "OUTBOX_KICK_ON_COMMIT must be 1/0, true/false, yes/no or on/off, got '2'",
    ),
    # Settings that are valid alone but not together.
    EnvCase(
        "OUTBOX_KICK_LINGER not below OUTBOX_REDIS_TIMEOUT",
        {"OUTBOX_KICK_LINGER": "5"},
        "OUTBOX_KICK_LINGER (5.0s) must be shorter than OUTBOX_REDIS_TIMEOUT (5.0s)",
        processes=True,
    ),
    EnvCase(
        "CELERY_TASK_SOFT_TIME_LIMIT not below CELERY_TASK_TIME_LIMIT",
        {"CELERY_TASK_SOFT_TIME_LIMIT": "300"},
        "CELERY_TASK_SOFT_TIME_LIMIT (300s) must be below CELERY_TASK_TIME_LIMIT (300s)",
        processes=True,
    ),
    # Only SQS redelivers by the visibility timeout (the Redis transport's ack emulation is off).
    EnvCase(
        "CELERY_TASK_TIME_LIMIT not below CELERY_VISIBILITY_TIMEOUT on SQS",
        {"CELERY_BROKER_URL": "sqs://", "CELERY_TASK_TIME_LIMIT": "900"},
        "CELERY_VISIBILITY_TIMEOUT (600s) must be above CELERY_TASK_TIME_LIMIT (900s)",
    ),
    EnvCase(
        "CELERY_VISIBILITY_TIMEOUT below CELERY_TASK_TIME_LIMIT on SQS",
        {"CELERY_BROKER_URL": "sqs://", "CELERY_VISIBILITY_TIMEOUT": "100"},
        "CELERY_VISIBILITY_TIMEOUT (100s) must be above CELERY_TASK_TIME_LIMIT (300s)",
    ),
]

CASES = _integer_cases() + _seconds_cases() + _log_format_cases() + _retention_cases() + OTHER_CASES
PROCESS_CASES = [case for case in CASES if case.processes]
