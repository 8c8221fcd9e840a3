"""Verify: compare each run's stream with what the database says was published.

A run's published events are its events below the cursor (``run_outbox.next_seq``). Each of
them that is still in ``run_events`` must be in the run's stream at ``<seq>-0``, with the
same ``type``, the same ``payload`` (as PostgreSQL renders jsonb to text, which is what the
drain publishes) and the same ``event`` id; the stream must hold nothing else. Per run the
report names:

* **missing**: published events absent from the stream (Redis lost them, or someone deleted
  them), as seq ranges;
* **differ**: entries whose type, payload or event id is not the event's;
* **extra**: entries the database did not publish: above the cursor, or with an id that the
  publisher never writes (``<seq>-<n>`` with n > 0);
* **trimmed**: absent events below the stream's first entry, when the stream itself shows it
  held them (see ``StreamInfo.trimmed_below``): consumers may trim, so these are not wrong;
* **ahead**: entries above the cursor that are exactly the run's next events: a drain
  published them and has not committed yet (or crashed before it could); its next attempt
  counts them as present. Not wrong;
* **unchecked**: entries below the cursor whose events the retention purge deleted; nothing
  is left to compare them with.

Both sides are read in pages (``page_size`` entries, and at most ``max_bytes`` of events per
database page), so a run of a million events costs bounded memory. Each run is compared
while its cursor row is held with ``FOR KEY SHARE``: a drain of that run, which takes the row
``FOR UPDATE SKIP LOCKED``, skips it meanwhile, so no entry reaches the stream halfway
through the comparison. Producers lock another row and never wait.

This module knows neither Celery nor Redis: the database side is a ``Ledger``
(``tasks.pg.SqlLedger``) and the stream side a ``StreamReader``
(``tasks.redis_sink.RedisStreamReader``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from models.errors import UnknownRun
from tasks.errors import RunBusy, StreamUnreadable
from tasks.sink import StreamItem, StreamReader
from tasks.store import MAX_ERROR_CHARS

PAGE_SIZE = 1000  # entries read per page, from the database and from the stream
RUN_PAGE_SIZE = 1000  # runs listed per page by `verify --all`
MAX_BYTES = 4 * 1024 * 1024  # type and payload per page (the first entry of a page always goes)
MAX_RANGES = 20  # seq ranges a report names; its count says how many in all
MAX_PROBLEMS = 100  # wrong runs a summary lists in its JSON form
LOCK_TIMEOUT = 5.0  # seconds to wait for a run's cursor row (a drain batch holds it briefly)
MAX_SUB = 2**64 - 1  # the largest second part of a stream entry id


@dataclasses.dataclass(frozen=True)
class Event:
    """A run's event as the database holds it (also a ``tasks.sink.Entry``)."""

    run_id: uuid.UUID
    id: int
    seq: int
    type: str
    payload: str  # CAST(payload AS text): what the drain publishes


class HeldRun(Protocol):
    """A run whose cursor row is held: its events, read while the cursor cannot move."""

    @property
    def next_seq(self) -> int:
        """The cursor: the events below it are published."""
        ...

    def published(self, after: int, limit: int, max_bytes: int) -> list[Event]:
        """Published events with seq above ``after``, in seq order: at most ``limit``, cut
        once they hold ``max_bytes`` of type and payload (the first one always comes)."""
        ...

    def events_at(self, seqs: Sequence[int]) -> list[Event]:
        """The run's events at these seqs (published or not), in seq order."""
        ...


class Ledger(Protocol):
    """What the database says was published."""

    def hold(
        self, run_id: uuid.UUID, *, exclusive: bool = False
    ) -> contextlib.AbstractContextManager[HeldRun]:
        """Hold the run's cursor row for the block: shared (drains skip the run, other
        verifies go on) or ``exclusive`` (verifies wait too).

        Raises UnknownRun when there is no such run, RunBusy when the row stays locked.
        """
        ...

    def runs(self, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
        """Up to ``limit`` run ids in id order, above ``after`` (from the first when None)."""
        ...

    def count_runs(self) -> int:
        """How many runs there are."""
        ...


class SeqRanges:
    """Seqs added in ascending order, kept as a count and the first ``limit`` ranges."""

    def __init__(self, limit: int = MAX_RANGES) -> None:
        self.count = 0
        self.limit = limit
        self.ranges: list[list[int]] = []
        self.truncated = False

    def add(self, seq: int) -> None:
        """Count ``seq`` (at or above every seq added before) into the ranges."""
        self.count += 1
        if self.ranges and self.ranges[-1][0] <= seq <= self.ranges[-1][1] + 1:
            self.ranges[-1][1] = max(self.ranges[-1][1], seq)
        elif len(self.ranges) < self.limit:
            self.ranges.append([seq, seq])
        else:
            self.truncated = True

    def __bool__(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        shown = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)
        return f"{shown}, ... ({self.count} in all)" if self.truncated else shown


@dataclasses.dataclass
class RunReport:
    """How one run's stream compares with its published events."""

    run_id: uuid.UUID
    next_seq: int = 0
    trimmed_below: int = 1
    matched: int = 0
    trimmed: int = 0
    unchecked: int = 0
    missing: SeqRanges = dataclasses.field(default_factory=SeqRanges)
    differ: SeqRanges = dataclasses.field(default_factory=SeqRanges)
    extra: SeqRanges = dataclasses.field(default_factory=SeqRanges)
    ahead: SeqRanges = dataclasses.field(default_factory=SeqRanges)
    first_difference: str | None = None
    error: str | None = None  # the run could not be compared: why

    @property
    def wrong(self) -> bool:
        """True unless the stream holds exactly the published events still in the database."""
        return bool(self.missing or self.differ or self.extra or self.error)

    @property
    def events(self) -> int:
        """Published events still in the database that were looked at."""
        return self.matched + self.missing.count + self.differ.count + self.trimmed

    def line(self) -> str:
        """One line for the CLI: the run and what is wrong with its stream."""
        if self.error is not None:
            return f"{self.run_id}: not checked: {self.error}"
        parts = []
        if self.missing:
            parts.append(f"missing {self.missing}")
        if self.differ:
            parts.append(f"differ {self.differ} (first: {self.first_difference})")
        if self.extra:
            parts.append(f"extra {self.extra}")
        if self.trimmed:
            parts.append(f"trimmed below {self.trimmed_below}")
        if self.ahead:
            parts.append(f"ahead of the cursor {self.ahead}")
        return f"{self.run_id}: " + ("; ".join(parts) if parts else "matches")

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the task reports for a wrong run."""
        result: dict[str, Any] = {
            "run_id": str(self.run_id),
            "status": "wrong" if self.wrong else "ok",
            "next_seq": self.next_seq,
            "matched": self.matched,
        }
        for name in ("missing", "differ", "extra", "ahead"):
            ranges: SeqRanges = getattr(self, name)
            result[name] = ranges.count
            if ranges:
                result[f"{name}_seqs"] = str(ranges)
        result["trimmed"] = self.trimmed
        if self.trimmed:
            result["trimmed_below"] = self.trimmed_below
        result["unchecked"] = self.unchecked
        if self.first_difference is not None:
            result["first_difference"] = self.first_difference
        if self.error is not None:
            result["error"] = self.error
        return result


@dataclasses.dataclass
class Summary:
    """The totals of a verify over one run or all of them, and the wrong runs' reports."""

    runs: int = 0
    wrong_runs: int = 0
    events: int = 0
    matched: int = 0
    missing: int = 0
    differ: int = 0
    extra: int = 0
    trimmed: int = 0
    ahead: int = 0
    unchecked: int = 0
    problems: list[RunReport] = dataclasses.field(default_factory=list)
    max_problems: int = MAX_PROBLEMS

    def add(self, report: RunReport) -> None:
        """Count one run's report in."""
        self.runs += 1
        self.events += report.events
        self.matched += report.matched
        self.missing += report.missing.count
        self.differ += report.differ.count
        self.extra += report.extra.count
        self.trimmed += report.trimmed
        self.ahead += report.ahead.count
        self.unchecked += report.unchecked
        if report.wrong:
            self.wrong_runs += 1
            if len(self.problems) < self.max_problems:
                self.problems.append(report)

    @property
    def ok(self) -> bool:
        """True when every run's stream matches."""
        return self.wrong_runs == 0

    def line(self) -> str:
        """The CLI's summary line."""
        runs = f"{self.runs} run{'' if self.runs == 1 else 's'}"
        head = f"verified {runs} and {self.events} published events: "
        if self.ok:
            body = "all match"
        else:
            body = (
                f"{self.wrong_runs} run{'' if self.wrong_runs == 1 else 's'} wrong "
                f"({self.missing} missing, {self.differ} differ, {self.extra} extra)"
            )
        notes = [
            f"{count} {what}"
            for count, what in (
                (self.trimmed, "trimmed by consumers"),
                (self.ahead, "ahead of the cursor"),
                (self.unchecked, "entries of purged events not compared"),
            )
            if count
        ]
        return head + body + "".join(f"; {note}" for note in notes)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the ``outbox.verify`` task returns."""
        result: dict[str, Any] = {"status": "ok" if self.ok else "wrong"}
        result |= {
            name: getattr(self, name)
            for name in (
                "runs",
                "wrong_runs",
                "events",
                "matched",
                "missing",
                "differ",
                "extra",
                "trimmed",
                "ahead",
                "unchecked",
            )
        }
        result["problems"] = [report.as_dict() for report in self.problems]
        if self.wrong_runs > len(self.problems):
            result["problems_left_off"] = self.wrong_runs - len(self.problems)
        return result


def difference(event: Event, item: StreamItem) -> str | None:
    """What of ``item`` is not ``event`` ("type", "payload", "event id"), or None if it is."""
    kinds = [
        kind
        for kind, same in (
            ("type", item.type == event.type),
            ("payload", item.payload == event.payload),
            ("event id", item.event is None or item.event == str(event.id)),
        )
        if not same
    ]
    return ", ".join(kinds) or None


def published_pages(
    held: HeldRun, *, after: int = 0, page_size: int = PAGE_SIZE, max_bytes: int = MAX_BYTES
) -> Iterator[list[Event]]:
    """The run's published events with seq above ``after``, a page at a time."""
    while True:
        page = held.published(after, page_size, max_bytes)
        if not page:
            return
        yield page
        after = page[-1].seq


def stream_items(
    reader: StreamReader,
    run_id: uuid.UUID,
    *,
    after: tuple[int, int] | None = None,
    last: int | None = None,
    page_size: int = PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
) -> Iterator[StreamItem]:
    """The run's stream entries above ``after`` up to seq ``last``, read a page at a time.

    A page of large entries makes the next one shorter, so a page holds about ``max_bytes``.
    """
    count = page_size
    while True:
        page = reader.read(run_id, after, last, count)
        yield from page
        if len(page) < count:
            return
        after = (page[-1].seq, page[-1].sub)
        size = sum(len(i.type or "") + len(i.payload or "") for i in page)
        count = max(1, min(page_size, count * max_bytes // max(size, 1)))


def compare(
    held: HeldRun,
    reader: StreamReader,
    run_id: uuid.UUID,
    *,
    page_size: int = PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
) -> RunReport:
    """Compare the held run's stream with its published events (see the module docstring)."""
    info = reader.info(run_id)
    report = RunReport(run_id, next_seq=held.next_seq, trimmed_below=info.trimmed_below)
    pages = published_pages(held, page_size=page_size, max_bytes=max_bytes)
    events = itertools.chain.from_iterable(pages)
    items = stream_items(reader, run_id, page_size=page_size, max_bytes=max_bytes)
    above: list[StreamItem] = []  # entries at or above the cursor, looked up a page at a time
    event, item = next(events, None), next(items, None)
    while event is not None or item is not None:
        if item is not None and (item.seq >= report.next_seq or item.sub != 0):
            if item.seq >= report.next_seq:
                above.append(item)
                if len(above) >= page_size:
                    _classify_above(report, held, above)
                    above = []
            else:
                report.extra.add(item.seq)  # an id the publisher never writes
            item = next(items, None)
        elif event is not None and (item is None or event.seq < item.seq):
            if event.seq < report.trimmed_below:
                report.trimmed += 1
            else:
                report.missing.add(event.seq)
            event = next(events, None)
        elif item is not None and (event is None or item.seq < event.seq):
            report.unchecked += 1  # below the cursor, and its event was purged
            item = next(items, None)
        elif event is not None and item is not None:
            _compare_entry(report, event, item)
            event, item = next(events, None), next(items, None)
    if above:
        _classify_above(report, held, above)
    return report


def _compare_entry(report: RunReport, event: Event, item: StreamItem) -> None:
    what = difference(event, item)
    if what is None:
        report.matched += 1
        return
    report.differ.add(event.seq)
    if report.first_difference is None:
        report.first_difference = f"{event.seq}-0 {what} differs"


def _classify_above(report: RunReport, held: HeldRun, items: Sequence[StreamItem]) -> None:
    seqs = sorted({item.seq for item in items if item.sub == 0})
    pending = {event.seq: event for event in held.events_at(seqs)}
    for item in items:
        event = pending.get(item.seq) if item.sub == 0 else None
        if event is not None and difference(event, item) is None:
            report.ahead.add(item.seq)
        else:
            report.extra.add(item.seq)


def verify_run(
    ledger: Ledger,
    reader: StreamReader,
    run_id: uuid.UUID,
    *,
    page_size: int = PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
) -> RunReport:
    """Compare one run's stream with its published events, holding its cursor meanwhile.

    A run that cannot be compared (its key is not a stream, its cursor stays locked) comes
    back with its ``error``. Raises UnknownRun for a run that does not exist, and
    SinkUnavailable or StoreUnavailable when a server cannot be reached.
    """
    try:
        with ledger.hold(run_id) as held:
            return compare(held, reader, run_id, page_size=page_size, max_bytes=max_bytes)
    except (RunBusy, StreamUnreadable) as exc:
        return RunReport(run_id, error=" ".join(str(exc).split())[:MAX_ERROR_CHARS])


def verify_all(
    ledger: Ledger,
    reader: StreamReader,
    *,
    on_run: Callable[[RunReport], None] | None = None,
    page_size: int = PAGE_SIZE,
    run_page_size: int = RUN_PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
    max_problems: int = MAX_PROBLEMS,
) -> Summary:
    """Verify every run, in run id order, ``run_page_size`` runs listed at a time.

    ``on_run`` hears each run's report as it is made (the CLI prints the wrong ones and
    shows progress). Runs deleted meanwhile are left out. Only the runs' tables are looked
    at: a stream whose run does not exist (any more) is not found.
    """
    summary = Summary(max_problems=max_problems)
    after = None
    while True:
        run_ids = ledger.runs(after, run_page_size)
        for run_id in run_ids:
            try:
                report = verify_run(
                    ledger, reader, run_id, page_size=page_size, max_bytes=max_bytes
                )
            except UnknownRun:
                continue  # deleted since it was listed
            summary.add(report)
            if on_run is not None:
                on_run(report)
        if len(run_ids) < run_page_size:
            return summary
        after = run_ids[-1]


def verify_one(
    ledger: Ledger,
    reader: StreamReader,
    run_id: uuid.UUID,
    *,
    page_size: int = PAGE_SIZE,
    max_bytes: int = MAX_BYTES,
) -> Summary:
    """Verify one run; its summary, in the same form as ``verify_all``'s."""
    summary = Summary()
    summary.add(verify_run(ledger, reader, run_id, page_size=page_size, max_bytes=max_bytes))
    return summary
