"""Retention: delete published events older than a cutoff, in short batches, oldest first.

"Older than" is by ``published_at``: an event stays at least the retention window after it
reached its stream, however long it waited to get there, so ``outbox replay`` can always go
back that far. The purge never deletes an unpublished event, nor one at or past its run's
cursor, and never a ``runs`` or ``run_outbox`` row, so a run's seq numbers go on from where
they were. It never touches a stream: trimming streams is the consumers' business.

Each batch is one short transaction over ``tasks.sql.PURGE_BATCH`` (which says why producers
and drains never wait for it), and a purge stops after ``max_batches``: the next one goes on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

from models.errors import ConfigError, preview
from tasks.errors import StoreUnavailable

logger = logging.getLogger(__name__)

DEFAULT_RETENTION = 7 * 86400.0  # seconds: a week
BATCH_SIZE = 1000  # events per transaction: a few milliseconds of row locks
MAX_BATCH_SIZE = 5000
# Batches per purge run: 250,000 events, a few seconds of work (about 7 ms a batch on a small
# 2-core machine). Beat runs one a minute, which keeps up with producers writing 4,000 events/s
# for good; a larger backlog is worked off over the next runs.
MAX_BATCHES = 250
MAX_DURATION = 36500 * 86400.0  # 100 years: anything longer is a typo, not a policy

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)", re.ASCII)
DURATION_FORMS = "90, 30s, 15m, 12h or 7d"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or a number with s, m, h or d (``90``, ``7d``).

    Raises ValueError, with a message that reads after the name of what was given, for
    anything else, for zero, and for more than 100 years.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"must be a duration such as {DURATION_FORMS}, got {preview(text)}")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"must be a duration longer than zero, got {preview(text)}")
    if seconds > MAX_DURATION:
        raise ValueError(f"must be a duration of at most 36500d, got {preview(text)}")
    return seconds


def duration_setting(env: Mapping[str, str], name: str, default: float) -> float:
    """Return ``env[name]`` as seconds (``default`` when unset); ConfigError naming it otherwise."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}") from exc


@dataclasses.dataclass(frozen=True)
class PurgeResult:
    """What one purge did: events deleted, batches run, and whether more is left."""

    deleted: int = 0
    batches: int = 0
    more: bool = False  # it stopped at max_batches; older events may be left for the next run
    cutoff: dt.datetime | None = None
    error: str | None = None  # the database became unavailable; the next run goes on

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the ``outbox.purge`` task returns."""
        result: dict[str, Any] = {
            "deleted": self.deleted,
            "batches": self.batches,
            "more": self.more,
            "cutoff": None if self.cutoff is None else self.cutoff.isoformat(),
        }
        if self.error is not None:
            result |= {"unavailable": "database", "error": self.error}
        return result


class PurgeStore(Protocol):
    """The outbox tables as the purge sees them."""

    def cutoff(self, older_than: float) -> dt.datetime:
        """The instant ``older_than`` seconds before now, by the database's clock."""
        ...

    def delete_batch(self, cutoff: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` purgeable events published before ``cutoff``; return how many."""
        ...

    def count(self, cutoff: dt.datetime) -> int:
        """How many purgeable events were published before ``cutoff``."""
        ...


def purge(
    store: PurgeStore,
    cutoff: dt.datetime,
    *,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> PurgeResult:
    """Delete events published before ``cutoff``, ``max_batches`` batches at most.

    A batch that comes back short ends the purge (``more`` is False). A database outage ends
    it too, reported in the result's ``error`` with what was deleted before it.
    """
    deleted = batches = 0
    try:
        while batches < max_batches:
            count = store.delete_batch(cutoff, batch_size)
            deleted, batches = deleted + count, batches + 1
            if count < batch_size:
                return PurgeResult(deleted, batches, more=False, cutoff=cutoff)
    except StoreUnavailable as exc:
        return PurgeResult(deleted, batches, more=True, cutoff=cutoff, error=str(exc))
    return PurgeResult(deleted, batches, more=True, cutoff=cutoff)


def purge_older_than(
    store: PurgeStore,
    retention: float,
    *,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> PurgeResult:
    """One bounded purge of the events published more than ``retention`` seconds ago.

    What beat's ``outbox.purge`` does: it logs what it deleted, and a database outage is
    logged and reported, never raised; the next run tries again.
    """
    try:
        cutoff = store.cutoff(retention)
    except StoreUnavailable as exc:
        result = PurgeResult(more=True, error=str(exc))
    else:
        result = purge(store, cutoff, batch_size=batch_size, max_batches=max_batches)
    if result.error is not None:
        logger.warning("purge stopped, the next run goes on: %s", result.error)
    elif result.deleted:
        logger.info(
            "purged %d events published before %s in %d batches%s",
            result.deleted,
            result.cutoff,
            result.batches,
            "; more left for the next run" if result.more else "",
        )
    return result
