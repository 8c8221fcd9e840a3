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
  id, so replay cannot put it back; it is reported, never forced. ``rebuild_run`` (``outbox
  replay RUN_ID --rebuild``) can: it writes the stream anew, and its consumers read it again
  from the start.

Seqs below ``StreamInfo.trimmed_below`` were trimmed by consumers on purpose: replay leaves
them alone. The run's cursor row is held alone (``FOR UPDATE``) for the whole replay, so no
drain adds later entries to the stream meanwhile, which would push the missing ones below
the stream's last id.

``rebuild_run`` is for the entries a replay cannot put back: holding the cursor row the same
way, it checks that the stream holds nothing but the run's own entries, deletes the stream's
key and publishes every published event still in the database again, from the first. The
stream is new: its consumers read it again from the start, and consumer groups on the key are
gone with it. ``replay_lost`` replays (or rebuilds) every run whose stream misses events.

Like verify, this module knows neither Celery nor Redis: the stream's key is deleted by a
callable it is given (``StreamEraser``).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

from models.errors import preview
from tasks.sink import PublishOutcome, Sink, StreamReader
from tasks.verify import (
    MAX_BYTES,
    MAX_SUB,
    PAGE_SIZE,
    Ledger,
    RunReport,
    SeqRanges,
    compare,
    difference,
    published_pages,
    stream_items,
    verify_all,
)

# Deletes a run's stream key (the CLI's: DEL of ``<prefix><run_id>`` on the sink's Redis).
StreamEraser = Callable[[uuid.UUID], object]


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
    rebuilt: bool = False  # the stream's key was deleted and the stream written anew
    removed: int = 0  # entries the stream held when a rebuild deleted its key

    def count(self, outcome: PublishOutcome) -> bool:
        """Add what the sink did with a page of this run's events; False when the sink found
        a conflict or refused them, which ends the replay (the result says which)."""
        if self.run_id in outcome.conflicts:
            self.conflict = outcome.conflicts[self.run_id]
            return False
        if self.run_id in outcome.refused:
            self.refused = outcome.refused[self.run_id]
            return False
        self.added += outcome.added[self.run_id]
        self.already_present += outcome.present[self.run_id]
        return True

    @property
    def complete(self) -> bool:
        """True when the stream now holds every published event replay looked at."""
        return not (self.conflict or self.refused or self.not_restored)

    def line(self) -> str:
        """The CLI's line: what replay added and found."""
        if self.rebuilt:
            return (
                f"{self.run_id}: rebuilt, {self.removed} entries removed with the old stream, "
                f"added {self.added}"
            )
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
                f"entries only above it. Rebuild the stream with `outbox replay {self.run_id} "
                "--rebuild`, which deletes it and writes it anew (its consumers then read it "
                "again from the start)"
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
        if self.rebuilt:
            result |= {"rebuilt": True, "removed": self.removed}
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
            if missing and not result.count(sink.publish(missing)):
                return result
        return result


def rebuild_run(
    ledger: Ledger,
    reader: StreamReader,
    sink: Sink,
    erase: StreamEraser,
    run_id: uuid.UUID,
    *,
    page_size: int = PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
) -> ReplayResult:
    """Delete the run's stream and publish its published events again, from the first.

    For what a replay cannot restore: entries at or below the stream's last id (a drain
    published later events into a stream that had lost its front, or entries were deleted
    from its middle). The cursor row is held alone throughout, so no drain publishes
    meanwhile (drains skip the run). A stream holding anything but the run's own entries
    (another event at an id, an entry the publisher never wrote) is left as it is and the
    result says why: it is not this run's to delete.

    Raises as ``replay_run`` does. A rebuild cut short by an outage leaves the stream
    partly written, never wrong: rebuilding again completes it.
    """
    with ledger.hold(run_id, exclusive=True) as held:
        report = compare(held, reader, run_id, page_size=page_size, max_bytes=max_bytes)
        info = reader.info(run_id)
        result = ReplayResult(run_id, 1, stream_last_seq=info.last_seq)
        if report.differ or report.extra:
            result.conflict = _not_ours(report)
            return result
        erase(run_id)
        result.rebuilt, result.removed = True, info.length
        for page in published_pages(held, page_size=page_size, max_bytes=max_bytes):
            if not result.count(sink.publish(page)):
                return result
        return result


def _not_ours(report: RunReport) -> str:
    found = []
    if report.differ:
        found.append(f"entries holding other events at {report.differ}")
    if report.extra:
        found.append(f"entries the publisher did not write at {report.extra}")
    return (
        f"the stream holds {' and '.join(found)} (was a run with this id deleted and created "
        "again?), so it was not deleted. Move or delete the stream, then replay again"
    )


@dataclasses.dataclass
class LostSummary:
    """What ``replay_lost`` did over every run."""

    runs: int = 0  # runs verified
    replayed: int = 0  # runs whose streams missed events and were replayed or rebuilt
    complete: int = 0  # of those, the runs whose streams now hold every published event
    added: int = 0
    left_alone: int = 0  # runs whose streams are wrong in ways a replay does not mend

    @property
    def ok(self) -> bool:
        """True when every stream that missed events was restored and none was left wrong."""
        return self.complete == self.replayed and self.left_alone == 0

    def line(self) -> str:
        """The CLI's summary line."""
        head = (
            f"verified {self.runs} run{'' if self.runs == 1 else 's'}: "
            f"{self.replayed} stream{' ' if self.replayed == 1 else 's '}missed events, "
            f"{self.complete} restored; {self.added} entries added"
        )
        if self.left_alone:
            head += (
                f"; {self.left_alone} wrong in other ways, left alone (see `outbox verify --all`)"
            )
        return head


def replay_lost(
    ledger: Ledger,
    reader: StreamReader,
    sink: Sink,
    erase: StreamEraser,
    *,
    rebuild: bool = False,
    on_run: Callable[[ReplayResult], None] | None = None,
    page_size: int = PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
) -> LostSummary:
    """Verify every run and replay each whose stream misses published events (rebuild it,
    with ``rebuild``); ``on_run`` hears each of their results.

    Only streams that miss events and hold nothing else wrong are touched: a stream with
    other events or stray entries in it (a run id used again), or that cannot be read, is
    counted as left alone. Runs are replayed one at a time, each while its cursor is held.
    """
    summary = LostSummary()

    def restore(report: RunReport) -> None:
        summary.runs += 1
        if not report.wrong:
            return
        if report.differ or report.extra or report.error or not report.missing:
            summary.left_alone += 1
            return
        if rebuild:
            result = rebuild_run(
                ledger, reader, sink, erase, report.run_id, page_size=page_size, max_bytes=max_bytes
            )
        else:
            result = replay_run(
                ledger, reader, sink, report.run_id, page_size=page_size, max_bytes=max_bytes
            )
        summary.replayed += 1
        summary.complete += result.complete
        summary.added += result.added
        if on_run is not None:
            on_run(result)

    verify_all(ledger, reader, on_run=restore, page_size=page_size, max_bytes=max_bytes)
    return summary
