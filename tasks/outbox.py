"""The Celery tasks: wiring only. Each looks up this process's runtime and calls ``tasks.jobs``.

``outbox.drain_run`` drains one run (what `celery call` uses), ``outbox.drain_runs`` a group
of runs (what dispatch queues), ``outbox.drain_kicked`` the runs producers kicked, and
``outbox.dispatch`` is what beat runs (with ``outbox.purge``, whose logic is ``tasks.purge``).
The faults they meet are handled in ``tasks.jobs``:
none of them retries through Celery, so attempts are counted in one place, the database.
``outbox.verify`` and ``outbox.replay`` check and restore streams (``tasks.verify``,
``tasks.replay``).
Importing this module registers the producers' kicker (``models.kicks``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from kombu import Connection

from models import errors, kicks
from models.ids import parse_run_id
from tasks import jobs, metrics, pg, redis_sink, runtime, shutdown
from tasks import purge as retention
from tasks import replay as stream_replay
from tasks import verify as stream_verify
from tasks.celery_app import CheckedTask, app
from tasks.errors import InvalidTaskArguments
from tasks.queueing import DrainQueue, Kicker
from tasks.settings import MAX_GROUP_SIZE

logger = logging.getLogger(__name__)


class CelerySender:
    """Sends the drain tasks through this app's broker (``tasks.queueing.Sender``)."""

    def send_drain(self, run_ids: Sequence[uuid.UUID]) -> None:
        if len(run_ids) == 1:
            drain_run.apply_async(args=(str(run_ids[0]),), **self._options())
        else:
            drain_runs.apply_async(args=([str(r) for r in run_ids],), **self._options())

    def send_kicked(self) -> None:
        drain_kicked.apply_async(**self._options())

    def _options(self) -> dict[str, Any]:
        return {}


class BoundedSender(CelerySender):
    """A sender for the producers' commit path: a connection of its own with short timeouts,
    and no retries, so a broker that is down or never answers costs ``timeout`` at most."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()  # a kombu connection is not shared between threads
        self._connection: Connection | None = None

    def send_drain(self, run_ids: Sequence[uuid.UUID]) -> None:
        with self._lock:
            self._closing_on_error(lambda: super(BoundedSender, self).send_drain(run_ids))

    def send_kicked(self) -> None:
        with self._lock:
            self._closing_on_error(super().send_kicked)

    def _closing_on_error(self, send: Callable[[], None]) -> None:
        try:
            send()
        except BaseException:
            self._release()  # a fresh one next time
            raise

    def close(self) -> None:
        """Close the connection, if one is open (the next send opens another)."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None

    def _options(self) -> dict[str, Any]:
        if self._connection is None:
            self._connection = app.connection_for_write(
                connect_timeout=self.timeout, transport_options=_bounded_options(self.timeout)
            )
        return {"connection": self._connection, "retry": False}


def _bounded_options(timeout: float) -> dict[str, Any]:
    options = dict(app.conf.broker_transport_options or {}, max_retries=0)
    if str(app.conf.broker_url).startswith("redis"):
        return options | {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return options | {"read_timeout": timeout, "write_timeout": timeout}


_SENDER = CelerySender()
_worker_cache: tuple[runtime.Runtime, jobs.Worker] | None = None
_kicker_cache: tuple[runtime.Runtime, Kicker, BoundedSender] | None = None


def _worker() -> jobs.Worker:
    """The task collaborators of this process's current runtime."""
    global _worker_cache
    current = runtime.current()
    if _worker_cache is None or _worker_cache[0] is not current:
        worker = current.worker(_SENDER)
        worker = dataclasses.replace(worker, meter=metrics.meter(), should_stop=shutdown.requested)
        _worker_cache = (current, worker)
    return _worker_cache[1]


class CountedKicks(DrainQueue):
    """The producers' DrainQueue, counting the kicks that queued no drain (one was queued or
    running already: ``outbox_kicks_coalesced_total``)."""

    @classmethod
    def of(cls, queue: DrainQueue) -> CountedKicks:
        """The same queue, counted."""
        return cls(
            queue.marks, queue.kicked, queue.sender, group_size=queue.group_size, ttl=queue.ttl
        )

    def kick(self, run_ids: Sequence[uuid.UUID]) -> bool:
        queued = super().kick(run_ids)
        try:
            metrics.meter().kicked(queued)
        except Exception as exc:  # noqa: BLE001 - a count never fails a kick
            logger.warning("could not count a kick in the metrics: %s", exc)
        return queued


def kick(run_ids: Sequence[uuid.UUID]) -> None:
    """Kick drains of ``run_ids`` after their producer's commit (registered in models.kicks).

    Never raises and never takes long: see ``tasks.queueing.Kicker``.
    """
    global _kicker_cache
    try:
        current = runtime.current()
    except Exception as exc:  # noqa: BLE001 - a kick never fails a committed transaction
        logger.warning("could not kick a drain: %s", exc)
        return
    if _kicker_cache is None or _kicker_cache[0] is not current:
        if _kicker_cache is not None:
            _kicker_cache[2].close()  # the runtime was replaced: its broker connection goes
        sender = BoundedSender(current.settings.kick_timeout)
        kicker = Kicker(
            lambda: CountedKicks.of(current.kick_queue(sender)), current.settings.kick_pause
        )
        _kicker_cache = (current, kicker, sender)
    _kicker_cache[1](run_ids)


def close_kicker() -> None:
    """Close the producers' kick connection of this process (at shutdown, or in tests)."""
    if _kicker_cache is not None:
        _kicker_cache[2].close()


kicks.set_kicker(kick)


# Bad arguments fail these tasks at once, with one line and no retry (``CheckedTask``): the
# argument count and names by their signatures, the values here, before anything is touched.


@app.task(name="outbox.drain_run", base=CheckedTask)
def drain_run(run_id: str) -> dict[str, Any]:
    """Drain one run; returns ``{"run_id", "status", "published", "already_present"}``."""
    run = parse_run_id(run_id)
    [result] = jobs.drain_group(_worker(), [run]).results
    return result.as_dict()


@app.task(name="outbox.drain_runs", base=CheckedTask)
def drain_runs(run_ids: list[str]) -> dict[str, Any]:
    """Drain a group of runs; returns ``{"runs", "published", "already_present", "statuses"}``."""
    if not isinstance(run_ids, list):
        raise InvalidTaskArguments(
            f"outbox.drain_runs takes a list of run ids, got {errors.preview(run_ids)}"
        )
    if len(run_ids) > MAX_GROUP_SIZE:
        raise InvalidTaskArguments(
            f"outbox.drain_runs takes at most {MAX_GROUP_SIZE} run ids, got {len(run_ids)}"
        )
    runs = [parse_run_id(r) for r in run_ids]
    return jobs.drain_group(_worker(), runs).as_dict()


@app.task(name="outbox.drain_kicked", base=CheckedTask)
def drain_kicked() -> dict[str, Any]:
    """Drain the runs producers kicked; returns what ``outbox.drain_runs`` does."""
    return jobs.drain_kicked(_worker()).as_dict()


@app.task(name="outbox.dispatch", base=CheckedTask)
def dispatch() -> dict[str, Any]:
    """Queue drains of the runs with pending events; returns ``{"found", "enqueued"}``."""
    return jobs.dispatch(_worker()).as_dict()


@app.task(name="outbox.purge", base=CheckedTask)
def purge() -> dict[str, Any]:
    """Delete events published longer than OUTBOX_RETENTION ago, a bounded amount per run;
    returns ``{"deleted", "batches", "more", "cutoff"}``."""
    current = runtime.current()
    store = pg.SqlPurgeStore(current.session_factory)
    return retention.purge_older_than(store, current.settings.retention).as_dict()


def _stream_checks() -> tuple[pg.SqlLedger, redis_sink.RedisStreamReader]:
    """The database and stream sides that verify and replay compare."""
    current = runtime.current()
    reader = redis_sink.RedisStreamReader(current.redis, current.settings.stream_prefix)
    return pg.SqlLedger(current.session_factory), reader


@app.task(name="outbox.verify", base=CheckedTask, throws=(*CheckedTask.throws, errors.UnknownRun))
def verify(run_id: str | None = None) -> dict[str, Any]:
    """Compare one run's stream (or every run's, with no id) with the database; returns
    ``{"status", "runs", "wrong_runs", "events", "missing", ..., "problems"}``."""
    run = None if run_id is None else parse_run_id(run_id)
    ledger, reader = _stream_checks()
    if run is None:
        return stream_verify.verify_all(ledger, reader).as_dict()
    return stream_verify.verify_one(ledger, reader, run).as_dict()


@app.task(name="outbox.replay", base=CheckedTask, throws=(*CheckedTask.throws, errors.UnknownRun))
def replay(run_id: str, from_seq: int = 1, rebuild: bool = False) -> dict[str, Any]:
    """Put a run's published events from ``from_seq`` back into its stream, or with
    ``rebuild`` delete the stream and publish them all again, from the first (what ``outbox
    replay RUN_ID --rebuild`` does); returns ``{"run_id", "status", "added",
    "already_present", "not_restored", ...}``."""
    run = parse_run_id(run_id)
    if not isinstance(rebuild, bool):
        raise InvalidTaskArguments(
            f"outbox.replay: rebuild must be true or false, got {errors.preview(rebuild)}"
        )
    try:
        first = stream_replay.check_from_seq(from_seq)
    except ValueError as exc:
        raise InvalidTaskArguments(f"outbox.replay: {exc}") from None
    if rebuild and first != 1:
        raise InvalidTaskArguments(
            f"outbox.replay: from_seq goes with a plain replay only (a rebuild publishes every "
            f"event from the first), got from_seq {first} with rebuild"
        )
    current = runtime.current()
    ledger, reader = _stream_checks()
    if rebuild:
        prefix = current.settings.stream_prefix

        def erase(stream_run: uuid.UUID) -> None:
            current.redis.delete(redis_sink.stream_key(prefix, stream_run))

        return stream_replay.rebuild_run(ledger, reader, current.sink, erase, run).as_dict()
    return stream_replay.replay_run(ledger, reader, current.sink, run, from_seq=first).as_dict()
