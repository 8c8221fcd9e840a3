"""Settings of the publisher, read from the environment once per process."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from sqlalchemy import URL

from models.db import database_url
from models.env import positive_float, positive_int
from models.errors import ConfigError
from tasks.drain import Limits

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STREAM_PREFIX = "outbox:run:"
DEFAULT_QUEUED_PREFIX = "outbox:queued:"


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

    def __post_init__(self) -> None:
        # The kicked drain's wait is a blocking Redis call: the socket must outlast it.
        if self.kick_linger >= self.redis_timeout:
            raise ConfigError(
                f"OUTBOX_KICK_LINGER ({self.kick_linger}s) must be shorter than "
                f"OUTBOX_REDIS_TIMEOUT ({self.redis_timeout}s)"
            )

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
            redis_url=env.get("OUTBOX_REDIS_URL") or DEFAULT_REDIS_URL,
            stream_prefix=env.get("OUTBOX_STREAM_PREFIX") or DEFAULT_STREAM_PREFIX,
            queued_prefix=env.get("OUTBOX_QUEUED_PREFIX") or DEFAULT_QUEUED_PREFIX,
            batch_size=positive_int(env, "OUTBOX_BATCH_SIZE", cls.batch_size),
            batch_max_bytes=positive_int(env, "OUTBOX_BATCH_MAX_BYTES", cls.batch_max_bytes),
            max_batches=positive_int(env, "OUTBOX_MAX_BATCHES", cls.max_batches),
            max_attempts=positive_int(env, "OUTBOX_MAX_ATTEMPTS", cls.max_attempts),
            group_size=positive_int(env, "OUTBOX_GROUP_SIZE", cls.group_size),
            dispatch_limit=positive_int(env, "OUTBOX_DISPATCH_LIMIT", cls.dispatch_limit),
            queued_ttl=positive_int(env, "OUTBOX_QUEUED_TTL", cls.queued_ttl),
            kick_linger=positive_float(env, "OUTBOX_KICK_LINGER", cls.kick_linger),
            kick_timeout=positive_float(env, "OUTBOX_KICK_TIMEOUT", cls.kick_timeout),
            kick_pause=positive_float(env, "OUTBOX_KICK_PAUSE", cls.kick_pause),
            redis_timeout=positive_float(env, "OUTBOX_REDIS_TIMEOUT", cls.redis_timeout),
        )
