"""Errors of the drain side; the producer's errors live in models.errors."""

from __future__ import annotations

from models.errors import ConfigError, OutboxError

__all__ = ["ConfigError", "OutboxError", "PublishError", "TransientPublishError"]


class PublishError(OutboxError):
    """Events could not be published to the sink."""


class TransientPublishError(PublishError):
    """The sink could not be reached; the same publish may succeed later."""
