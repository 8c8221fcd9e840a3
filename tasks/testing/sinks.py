"""The sink a test publishes into, read back the way a consumer reads it.

Two kinds with one reading API, ``entries(run_id)``: the real Redis stream sink on the test's
own key prefix, and the in-memory sink (``tasks.sink.InMemorySink``) for tests that need no
Redis. ``RecordingSink`` wraps either one to tell which entries a drain added.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Literal, Protocol

from tasks.redis_sink import Client, RedisStreamSink, read_stream
from tasks.sink import Entry, InMemorySink, PublishOutcome, Sink, StreamEntry

SinkKind = Literal["redis", "memory"]
SINK_KINDS: tuple[SinkKind, ...] = ("redis", "memory")


class Streams(Protocol):
    """A sink to publish into, and its runs' streams as a consumer reads them."""

    @property
    def kind(self) -> SinkKind: ...

    @property
    def publisher(self) -> Sink:
        """The sink the drains publish into."""
        ...

    def entries(self, run_id: uuid.UUID) -> list[StreamEntry]:
        """Every entry of the run's stream, in seq order (seq, type, payload as JSON text)."""
        ...


class RedisStreams:
    """The Redis stream sink on ``prefix``, read back with XRANGE."""

    kind: SinkKind = "redis"

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.publisher: Sink = RedisStreamSink(client, prefix)

    def entries(self, run_id: uuid.UUID) -> list[StreamEntry]:
        """Every entry of the run's stream, in seq order."""
        found: list[StreamEntry] = []
        while True:
            page = read_stream(
                self.client, self.prefix, run_id, after=found[-1].seq if found else 0
            )
            if not page:
                return found
            found.extend(page)


class MemoryStreams:
    """The in-memory sink: no Redis, the same rules (``tasks.sink``)."""

    kind: SinkKind = "memory"

    def __init__(self) -> None:
        self.memory = InMemorySink()
        self.publisher: Sink = self.memory

    def entries(self, run_id: uuid.UUID) -> list[StreamEntry]:
        """Every entry of the run's stream, in seq order."""
        return self.memory.entries(run_id)


def events(entries: Sequence[StreamEntry]) -> list[tuple[str, object]]:
    """The (type, payload) of each entry, the payload parsed from its JSON text."""
    return [(entry.type, json.loads(entry.payload)) for entry in entries]


class RecordingSink:
    """Publishes through ``inner`` and keeps, per run, the entries it added (not those that
    were present already), in the order they were added."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.added: dict[uuid.UUID, list[StreamEntry]] = {}

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        """Publish ``entries`` through the inner sink, and record what it added."""
        outcome = self.inner.publish(entries)
        by_run: dict[uuid.UUID, list[Entry]] = {}
        for entry in entries:
            by_run.setdefault(entry.run_id, []).append(entry)
        for run_id, count in outcome.added.items():
            if count:
                # A sink takes a run's batch in seq order: entries at or below the stream's
                # top are present, the ones above it are added, so the added ones are the
                # batch's last `count` (tasks.sink's rules).
                added = by_run[run_id][-count:]
                self.added.setdefault(run_id, []).extend(
                    StreamEntry(e.seq, e.type, e.payload, e.id) for e in added
                )
        return outcome

    def take(self) -> dict[uuid.UUID, list[StreamEntry]]:
        """Return what was added since the last take, and start afresh."""
        added, self.added = self.added, {}
        return added
