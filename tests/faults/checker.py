"""The one checker of the fault scenarios: every run's stream against the database, at the end.

The comparison is ``tasks.verify`` (what `outbox verify --all` runs): per run, the published
events the stream misses are *lost*, and entries that differ from their event or that the
database never published are wrong. On top of it, one pass over each stream (read with
verify's ``stream_items``) tells the two ways an event could be wrong in a stream apart:

* **duplicated**: an entry whose ``event`` id an earlier entry of the stream has already;
* **reordered**: an entry whose ``event`` id is below an earlier entry's (event ids grow with
  ``seq`` within a run, so a stream in seq order has them ascending).

Streams whose runs were deleted have nothing left to compare with in the database, but get
the same pass. The database side adds the events still pending, the parked runs, and the
rows a worker still holds locked; the workers' logs give their errors.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterable

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tasks.pg import SqlLedger
from tasks.redis_sink import RedisStreamReader
from tasks.verify import RunReport, stream_items, verify_all

PENDING = text(
    "SELECT count(*) FROM run_events WHERE published_at IS NULL"
    " AND NOT (run_id = ANY(CAST(:left_out AS uuid[])))"
)
EVENTS = text("SELECT count(*) FROM run_events")
PUBLISHED_OF = text(
    "SELECT count(*) FROM run_events"
    " WHERE run_id = ANY(CAST(:runs AS uuid[])) AND published_at IS NOT NULL"
)
EVENTS_OF = text("SELECT count(*) FROM run_events WHERE run_id = ANY(CAST(:runs AS uuid[]))")
PARKED = text(
    "SELECT run_id, next_seq, last_error FROM run_outbox WHERE status = 'stalled' ORDER BY run_id"
)
# Rows of run_outbox (the drain's cursors) or runs that another session holds: FOR UPDATE and
# FOR KEY SHARE take a RowShareLock on the table for as long as the transaction lasts.
HELD_LOCKS = text(
    "SELECT count(*) FROM pg_locks AS l"
    " JOIN pg_database AS d ON d.oid = l.database"
    " WHERE d.datname = current_database() AND l.pid <> pg_backend_pid()"
    " AND l.locktype = 'relation' AND l.mode = 'RowShareLock'"
    " AND l.relation IN (CAST('run_outbox' AS regclass), CAST('runs' AS regclass))"
)
UNLOCKED_CURSORS = text(
    "SELECT count(*) FROM (SELECT 1 FROM run_outbox FOR UPDATE SKIP LOCKED) AS free"
)
CURSORS = text("SELECT count(*) FROM run_outbox")


@dataclasses.dataclass
class Findings:
    """What the checker found at the end of a scenario."""

    runs: int = 0
    events: int = 0  # committed events in the database, every run
    lost: int = 0  # published events missing from their streams
    duplicated: int = 0
    reordered: int = 0
    differ: int = 0  # entries verify found holding another event (reused runs left out)
    extra: int = 0  # entries verify found that the database did not publish (ditto)
    pending: int = 0  # events not published yet (reused runs left out)
    parked: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)
    reports: dict[uuid.UUID, RunReport] = dataclasses.field(default_factory=dict)
    deleted_streams: int = 0  # streams whose runs are gone

    def lost_by_run(self) -> dict[uuid.UUID, str]:
        """The seq ranges each run's stream misses (runs that miss none left out)."""
        return {r: str(rep.missing) for r, rep in self.reports.items() if rep.missing}


def check(
    Session: sessionmaker[Session],
    sink: redis.Redis,
    prefix: str,
    *,
    reused: Iterable[uuid.UUID] = (),
) -> Findings:
    """Compare every run's stream with the database; ``reused`` runs (deleted and created
    again with their ids) are counted apart: their streams hold their predecessors' entries."""
    reused = set(reused)
    reader = RedisStreamReader(sink, prefix)
    findings = Findings()

    def count(report: RunReport) -> None:
        findings.reports[report.run_id] = report
        if report.run_id in reused:
            return
        assert report.error is None, report.line()
        findings.lost += report.missing.count
        findings.differ += report.differ.count
        findings.extra += report.extra.count

    summary = verify_all(SqlLedger(Session), reader, on_run=count)
    findings.runs = summary.runs
    for run_id in findings.reports:
        _stream_order(findings, reader, run_id)
    for run_id in _streams_without_runs(sink, prefix, set(findings.reports)):
        findings.deleted_streams += 1
        _stream_order(findings, reader, run_id)
    with Session() as session:
        findings.events = int(session.execute(EVENTS).scalar_one())
        findings.pending = int(session.execute(PENDING, {"left_out": list(reused)}).scalar_one())
        findings.parked = {r.run_id: r.last_error or "" for r in session.execute(PARKED)}
    return findings


def _stream_order(findings: Findings, reader: RedisStreamReader, run_id: uuid.UUID) -> None:
    seen: set[str] = set()
    highest = -1
    for item in stream_items(reader, run_id):
        if item.event is None:
            continue
        if item.event in seen:
            findings.duplicated += 1
        seen.add(item.event)
        event_id = int(item.event)
        if event_id < highest:
            findings.reordered += 1
        highest = max(highest, event_id)


def _streams_without_runs(sink: redis.Redis, prefix: str, known: set[uuid.UUID]) -> list[uuid.UUID]:
    found = []
    for key in sink.scan_iter(match=f"{prefix}*", count=1000, _type="stream"):
        run_id = uuid.UUID(key.decode()[len(prefix) :])
        if run_id not in known:
            found.append(run_id)
    return found


def published_events(Session: sessionmaker[Session], runs: Iterable[uuid.UUID]) -> tuple[int, int]:
    """(events, published events) of these runs."""
    params = {"runs": list(runs)}
    with Session() as session:
        events = int(session.execute(EVENTS_OF, params).scalar_one())
        published = int(session.execute(PUBLISHED_OF, params).scalar_one())
    return events, published


def locked_runs(Session: sessionmaker[Session]) -> tuple[int, int]:
    """(table locks on runs or run_outbox that other sessions hold, cursor rows they hold)."""
    with Session() as session:
        held = int(session.execute(HELD_LOCKS).scalar_one())
        rows = int(session.execute(CURSORS).scalar_one())
        free = int(session.execute(UNLOCKED_CURSORS).scalar_one())
        session.rollback()  # our own row locks go at once
    return held, rows - free


# The workers' logs. A record begins with Celery's "[time: LEVEL/process]" prefix; its
# continuation lines (a traceback) belong to it.
RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+: (\w+)/[^\]]*\]", re.MULTILINE)
# What a worker logs about a pool process that the scenario itself killed with SIGKILL: the
# pool's report of the death and the lost task's WorkerLostError. The fault, not an error.
KILLED_BY_THE_SCENARIO = (
    re.compile(r"exited with 'signal 9 \(SIGKILL\)'"),
    re.compile(r"WorkerLostError\('Worker exited prematurely: signal 9 \(SIGKILL\)"),
)


def parked_with_conflict(run_ids: Iterable[uuid.UUID]) -> list[re.Pattern[str]]:
    """The records of these runs parked with a CONFLICT: what a reused id must come to."""
    return [re.compile(rf"run {run_id} parked: CONFLICT ") for run_id in run_ids]


def worker_errors(logs: str, expected: Iterable[re.Pattern[str]] = ()) -> list[str]:
    """The records at ERROR or CRITICAL, and any traceback, that neither the scenario's own
    kills nor the ``expected`` patterns explain: a crash, a task that failed, a race that
    raised."""
    explained = (*KILLED_BY_THE_SCENARIO, *expected)
    starts = [(m.start(), m.group(1)) for m in RECORD.finditer(logs)]
    errors = []
    for index, (start, level) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(logs)
        record = logs[start:end].rstrip()
        bad = level in ("ERROR", "CRITICAL") or "Traceback" in record
        if bad and not any(pattern.search(record) for pattern in explained):
            errors.append(record[:2000])
    head = logs[: starts[0][0]] if starts else logs
    if "Traceback" in head:
        errors.append(head[:2000])
    return errors
