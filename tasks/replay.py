"""Replay: put a run's published events back into its stream, exactly once.

For when the stream lost entries (a Redis that keeps no data restarted, an AOF ``everysec``
crash lost its last second, someone deleted the key): replay reads the run's published
events that the database still holds (the retention window), from ``from_seq`` on, a page
at a time, next to the same range of the stream, and for each event:

* the stream holds it: counted as already present;
* the stream holds another entry at its id: a conflict (a run deleted and created again with
  this id?); replay stops there and changes nothing of it;
* the stream lacks it and its seq is above the stream's last id: it goes to the normal sink
  (``tasks.sink.Sink.publish``), which adds it, exactly once, at ``<seq>-0``;
* the stream lacks it at or below its last id: Redis adds entries only above a stream's last
  id, so replay cannot put it back; it is reported, never forced. Deleting the stream and
  replaying from 1 rebuilds it (its consumers then read it again from the start).

Seqs below ``StreamInfo.trimmed_below`` were trimmed by consumers on purpose: replay leaves
them alone. The run's cursor row is held alone (``FOR UPDATE``) for the whole replay, so no
drain adds later entries to the stream meanwhile, which would push the missing ones below
the stream's last id. Like verify, this module knows neither Celery nor Redis.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from models.errors import preview
from tasks.sink import Sink
from tasks.verify import (
    MAX_BYTES,
    MAX_SUB,
    PAGE_SIZE,
    Ledger,
    SeqRanges,
    StreamReader,
    difference,
    published_pages,
    stream_items,
)


@dataclasses.dataclass
class ReplayResult:
    """What a replay of one run did."""

    run_id: uuid.UUID
    from_seq: int
    added: int = 0  # entries the sink added
    already_present: int = 0  # events the stream held already
    trimmed_below: int = 1  # seqs below this were trimmed by consumers and left alone
    not_restored: SeqRanges = dataclasses.field(default_factory=SeqRanges)
    stream_last_seq: int = 0  # the stream's last id when replay began
    conflict: str | None = None  # why replay stopped at an entry that is another event
    refused: str | None = None  # what the sink answered when it refused the entries

    @property
    def complete(self) -> bool:
        """True when the stream now holds every published event replay looked at."""
        return not (self.conflict or self.refused or self.not_restored)

    def line(self) -> str:
        """The CLI's line: what replay added and found."""
        text = f"{self.run_id}: added {self.added}, {self.already_present} already present"
        if self.trimmed_below > self.from_seq:
            text += f"; below {self.trimmed_below} trimmed by consumers, left alone"
        return text

    def problem(self) -> str | None:
        """Why the stream is not complete, in one sentence; None when it is."""
        if self.conflict is not None:
            return f"replay of run {self.run_id} stopped: {self.conflict}"
        if self.refused is not None:
            return f"the sink refused run {self.run_id}'s entries: {self.refused}"
        if self.not_restored:
            seqs, are = ("seq", "it is") if self.not_restored.count == 1 else ("seqs", "they are")
            return (
                f"could not restore {seqs} {self.not_restored} of run {self.run_id}: {are} at "
                f"or below the stream's last id {self.stream_last_seq}-0, and Redis adds "
                "entries only above it. To rebuild the stream, delete its key and replay from "
                "1 (its consumers then read it again from the start)"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the ``outbox.replay`` task returns."""
        result: dict[str, Any] = {
            "run_id": str(self.run_id),
            "status": "complete" if self.complete else "incomplete",
            "from_seq": self.from_seq,
            "added": self.added,
            "already_present": self.already_present,
            "not_restored": self.not_restored.count,
        }
        if self.not_restored:
            result["not_restored_seqs"] = str(self.not_restored)
            result["stream_last_seq"] = self.stream_last_seq
        if self.trimmed_below > self.from_seq:
            result["trimmed_below"] = self.trimmed_below
        if self.conflict is not None:
            result["conflict"] = self.conflict
        if self.refused is not None:
            result["error"] = self.refused
        return result


def check_from_seq(value: object) -> int:
    """``value`` as a first seq to replay from, or ValueError naming what was wrong."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"from_seq must be an integer of at least 1, got {preview(value)}")
    return value


def replay_run(
    ledger: Ledger,
    reader: StreamReader,
    sink: Sink,
    run_id: uuid.UUID,
    *,
    from_seq: int = 1,
    page_size: int = PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
) -> ReplayResult:
    """Put the run's published events from ``from_seq`` on back into its stream.

    Raises
    ------
    UnknownRun
        No run has this id.
    RunBusy
        The run's cursor row stayed locked.
    StreamUnreadable
        The run's key holds something other than a stream.
    SinkUnavailable, StoreUnavailable
        A server could not be reached; what was added stays added, and replaying again is
        safe.
    """
    from_seq = check_from_seq(from_seq)
    with ledger.hold(run_id, exclusive=True) as held:
        info = reader.info(run_id)
        result = ReplayResult(
            run_id,
            from_seq,
            trimmed_below=max(from_seq, info.trimmed_below),
            stream_last_seq=info.last_seq,
        )
        start = result.trimmed_below - 1
        for page in published_pages(held, after=start, page_size=page_size, max_bytes=max_bytes):
            held_now = {
                item.seq: item
                for item in stream_items(
                    reader,
                    run_id,
                    after=(page[0].seq - 1, MAX_SUB),
                    last=page[-1].seq,
                    page_size=page_size,
                    max_bytes=max_bytes,
                )
                if item.sub == 0
            }
            missing = []
            for event in page:
                item = held_now.get(event.seq)
                if item is not None:
                    what = difference(event, item)
                    if what is not None:
                        result.conflict = (
                            f"entry {event.seq}-0 holds another event ({what} differs; was a "
                            "run with this id deleted and created again?). Move or delete the "
                            "stream, then replay again"
                        )
                        return result
                    result.already_present += 1
                elif event.seq > info.last_seq:
                    missing.append(event)
                else:
                    result.not_restored.add(event.seq)
            if missing:
                outcome = sink.publish(missing)
                if run_id in outcome.conflicts:
                    result.conflict = outcome.conflicts[run_id]
                    return result
                if run_id in outcome.refused:
                    result.refused = outcome.refused[run_id]
                    return result
                result.added += outcome.added[run_id]
                result.already_present += outcome.present[run_id]
        return result
