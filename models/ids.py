"""Run id parsing: every public API accepts a uuid.UUID or its string form, nothing else."""

from __future__ import annotations

import uuid

from models import errors


def parse_run_id(value: object) -> uuid.UUID:
    """Return ``value`` as a UUID, or raise InvalidRunId naming the bad value."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise errors.InvalidRunId(f"run id must be a UUID, got {errors.preview(value)}")
