"""Log lines for whoever is on call: one line per drain, JSON lines on request, quiet idle ticks.

* ``drain_line`` is the one line a drain task logs (``tasks.jobs``): its runs (their ids, or
  their count when many), the seq range each run's stream now holds from this drain, the
  entries added and already present, the duration and the outcome.
* ``JsonFormatter`` writes each record as one JSON object (``OUTBOX_LOG_FORMAT=json``): time,
  level, logger, message, and the structured fields given with ``extra=``.
* ``QuietIdleDispatch`` drops the two lines Celery logs for every dispatch that found nothing
  to queue, so an idle worker logs nothing per beat tick.
* ``ShortBeatSendErrors`` makes beat's error for a task it could not send because the broker
  is unreachable one line, without the traceback and the stack Celery adds to it.

No Celery here: ``tasks.jobs`` logs the drain's line, ``tasks.celery_app`` installs the rest.
"""

from __future__ import annotations

import ast
import collections
import datetime as dt
import itertools
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tasks.drain import DrainResult
from tasks.sink import Entry, PublishOutcome, Sink

MAX_RUNS_NAMED = 3  # a drain of more runs is logged with their count, not their ids
MAX_ERROR_CHARS = 300  # of the first error a drain's line quotes
DISPATCH_TASK = "outbox.dispatch"
# Celery's format of the line a worker logs when it takes a task (celery.app.trace.LOG_RECEIVED;
# should Celery change it, the lines are kept, never lost).
RECEIVED_LINE = "Task %(name)s[%(id)s] received"


class PublishedSeqs:
    """A sink that passes each batch on and notes, per run, the seqs the sink now holds.

    A run's range covers the entries of its batches that the sink took whole (added or
    present already); entries of a run it refused, or found in conflict, are not noted.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.ranges: dict[uuid.UUID, tuple[int, int]] = {}

    def publish(self, entries: Sequence[Entry]) -> PublishOutcome:
        """Publish through the wrapped sink, then note the seqs of the runs it took."""
        outcome = self.sink.publish(entries)
        for run_id, group in itertools.groupby(entries, key=lambda entry: entry.run_id):
            if run_id not in outcome.added:
                continue
            seqs = [entry.seq for entry in group]
            first, last = self.ranges.get(run_id, (seqs[0], seqs[-1]))
            self.ranges[run_id] = (min(first, seqs[0]), max(last, seqs[-1]))
        return outcome


def drain_line(
    results: Sequence[DrainResult],
    ranges: Mapping[uuid.UUID, tuple[int, int]],
    seconds: float,
) -> tuple[str, dict[str, Any]]:
    """The line a drain logs, and its fields for ``extra=`` (what the JSON format shows).

    ``ranges`` are the seqs each run's stream took (``PublishedSeqs``); runs whose drain
    moved nothing, or ended without committing, show none.
    """
    added = sum(r.published for r in results)
    present = sum(r.already_present for r in results)
    statuses = dict(sorted(collections.Counter(r.status.value for r in results).items()))
    moved = {r.run_id: ranges[r.run_id] for r in results if _moved(r) and r.run_id in ranges}
    one, named = len(results) == 1, len(results) <= MAX_RUNS_NAMED
    subject = f"run {results[0].run_id}" if one else f"{len(results)} runs"
    if one:
        outcome = results[0].status.value
    else:
        outcome = ", ".join(f"{status} {count}" for status, count in statuses.items())
    message = (
        f"drain of {subject}: {_published(moved, one=one, named=named)} ({added} added, "
        f"{present} already present) in {seconds:.3f}s; {outcome}"
    )
    error = next((r.error for r in results if r.error), None)
    if error is not None:
        message += f"; {_cut(error)}"
    fields: dict[str, Any] = {
        "runs": len(results),
        "added": added,
        "already_present": present,
        "duration_seconds": round(seconds, 6),
        "statuses": statuses,
    }
    if named:
        fields["run_ids"] = [str(r.run_id) for r in results]
        fields["seqs"] = {str(run_id): list(span) for run_id, span in moved.items()}
    if error is not None:
        fields["error"] = _cut(error)
    return message, fields


def _moved(result: DrainResult) -> bool:
    return result.published + result.already_present > 0


def _published(moved: Mapping[uuid.UUID, tuple[int, int]], *, one: bool, named: bool) -> str:
    """What the streams took: seq ranges, each with its run's id when there are a few."""
    if not moved:
        return "nothing published"
    if one:
        [span] = moved.values()
        return f"{_span(span)} published"
    if named:
        spans = ", ".join(f"{run_id} {_span(span)}" for run_id, span in moved.items())
        return f"{spans} published"
    return f"seqs of {len(moved)} runs published"


def _span(seqs: tuple[int, int]) -> str:
    first, last = seqs
    return f"seq {first}" if first == last else f"seqs {first}-{last}"


def _cut(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else f"{line[: MAX_ERROR_CHARS - 3]}..."


# The attributes every LogRecord has: whatever else a record carries came with ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON.

    Every line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``process``
    (MainProcess, ForkPoolWorker-1, ...) and ``message``; then the fields the record was
    given with ``extra=``, the fields ``context`` returns (the current task), and the
    traceback as ``exception``, if any. Values JSON cannot hold are written as text.
    """

    def __init__(self, context: Callable[[], Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if self.context is not None:
            for key, value in self.context().items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class QuietIdleDispatch(logging.Filter):
    """Drops a worker's INFO lines of a dispatch that queued nothing: idle ticks log nothing.

    Celery logs "Task outbox.dispatch[...] received" when the worker takes the message and
    "... succeeded in ...s: {'found': 0, 'enqueued': 0}" when it ends: at the dispatch
    interval (1 s), all of an idle worker's log. Dropped: every "received" line of a
    dispatch (its "succeeded" line says what it did), and the "succeeded" line of a dispatch
    that queued nothing and met no outage. Kept: any other task's lines, a dispatch that
    queued drains or met an outage, every warning and error, and everything when the logger
    is set to DEBUG. Beat's own line per tick ("Sending due task") is kept: it is how its log
    shows that beat is alive.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or logging.getLogger(record.name).isEnabledFor(
            logging.DEBUG
        ):
            return True
        data = getattr(record, "data", None)  # what Celery's task lines carry in `extra`
        if not isinstance(data, dict) or data.get("name") != DISPATCH_TASK:
            return True
        if record.msg == RECEIVED_LINE:
            return False
        # Any other line (a failure, a bad argument) says more than "nothing to do": kept.
        return "return_value" not in data or not _idle(data["return_value"])


def _idle(return_value: object) -> bool:
    """Whether a dispatch's result (its repr, as Celery logs it) says it did nothing."""
    try:
        result = ast.literal_eval(str(return_value))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False
    return isinstance(result, dict) and result.get("enqueued") == 0 and "unavailable" not in result


# The loggers of Celery's "received" and "succeeded" lines.
QUIETED_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_idle_dispatch() -> None:
    """Install ``QuietIdleDispatch`` on the loggers of those lines (once)."""
    for name in QUIETED_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, QuietIdleDispatch) for f in log.filters):
            log.addFilter(QuietIdleDispatch())


def format_as_json(
    logger: logging.Logger, context: Callable[[], Mapping[str, Any]] | None = None
) -> None:
    """Make every handler of ``logger`` write JSON lines."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter(context))


# Celery's format of beat's error for a due task it could not send (celery.beat.Scheduler
# .apply_entry): the error, then the whole stack, then the traceback (exc_info). Should Celery
# change it, the lines are left as they are.
BEAT_SEND_ERROR = "Message Error: %s\n%s"
BEAT_LOGGER = "celery.beat"


class ShortBeatSendErrors(logging.Filter):
    """Makes beat's "Couldn't apply scheduled task" a single line when the broker is down.

    While the broker restarts, beat fails to send every due dispatch, and Celery logs each
    failure with the stack and the traceback: dozens of lines per tick, where a worker logs
    one per reconnect. A failure caused by one of ``connection_errors`` (anywhere in the
    exception's chain) is logged as the error's own one line; any other failure keeps its
    traceback, because that is a bug to read.
    """

    def __init__(self, connection_errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.connection_errors = connection_errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != BEAT_SEND_ERROR or not record.exc_info or not record.args:
            return True
        error = record.exc_info[1]
        if error is None or not self._broker_down(error):
            return True
        record.msg = "%s (the broker is unreachable; beat sends it again when it is next due)"
        record.args = (" ".join(str(error).split()),)
        record.exc_info = None
        record.exc_text = None
        return True

    def _broker_down(self, error: BaseException) -> bool:
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            if isinstance(current, self.connection_errors):
                return True
            seen.add(id(current))
            current = current.__cause__ or current.__context__
        return False


def shorten_beat_send_errors(connection_errors: tuple[type[BaseException], ...]) -> None:
    """Install ``ShortBeatSendErrors`` on beat's logger (once)."""
    log = logging.getLogger(BEAT_LOGGER)
    if not any(isinstance(f, ShortBeatSendErrors) for f in log.filters):
        log.addFilter(ShortBeatSendErrors(connection_errors))
