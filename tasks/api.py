"""The drain API for applications, scripts and tests: drain now, in this process.

Every function takes its collaborators as keyword arguments (a session factory, a publisher,
that is a sink, and settings); what is not given comes from this process's runtime, built
from the environment (``tasks.runtime``). No broker or worker is involved.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from models.errors import InvalidRunId, preview
from models.ids import parse_run_id
from tasks import drain, runtime
from tasks.drain import DrainResult, Fault, PassResult, Status
from tasks.errors import PublishError, SinkUnavailable
from tasks.pg import SessionFactory, SqlStore
from tasks.settings import Settings
from tasks.sink import Sink


def _collaborators(
    session_factory: SessionFactory | None, publisher: Sink | None, settings: Settings | None
) -> tuple[SqlStore, Sink, Settings]:
    if session_factory is not None and publisher is not None and settings is not None:
        return SqlStore(session_factory), publisher, settings
    current = runtime.current()
    store = SqlStore(session_factory) if session_factory is not None else current.store
    return store, publisher or current.sink, settings or current.settings


def _run_ids(run_ids: Sequence[uuid.UUID | str]) -> list[uuid.UUID]:
    # A lone id is a str, itself a sequence: refuse it whole rather than char by char.
    if isinstance(run_ids, (str, bytes)):
        raise InvalidRunId(f"expected a list of run ids, got {preview(run_ids)}")
    return [parse_run_id(r) for r in run_ids]


def drain_outbox_for_runs(
    run_ids: Sequence[uuid.UUID | str],
    *,
    session_factory: SessionFactory | None = None,
    publisher: Sink | None = None,
    settings: Settings | None = None,
) -> list[DrainResult]:
    """Drain several runs together; one result per run, in order (see ``drain.drain_runs``).

    Raises InvalidRunId if one of ``run_ids`` is not a UUID, before anything is drained.
    """
    ids = _run_ids(run_ids)
    store, sink, settings = _collaborators(session_factory, publisher, settings)
    return drain.drain_runs(store, sink, ids, settings.limits)


def drain_outbox_for_run(
    run_id: uuid.UUID | str,
    *,
    session_factory: SessionFactory | None = None,
    publisher: Sink | None = None,
    settings: Settings | None = None,
) -> DrainResult:
    """Drain one run for up to ``settings.max_batches`` batches.

    Returns ``drained``, ``more`` (the batch limit was hit), ``locked``, ``missing`` or
    ``stalled`` (parked: its ``error`` says why), with what it published.

    Raises
    ------
    InvalidRunId
        ``run_id`` is not a UUID.
    PublishError
        The sink refused the run's entries (the attempt is recorded).
    SinkUnavailable
        The sink was unavailable (noted on the run, not counted against it).
    """
    [result] = drain_outbox_for_runs(
        [run_id], session_factory=session_factory, publisher=publisher, settings=settings
    )
    if result.fault is Fault.OUTAGE:
        raise SinkUnavailable(result.error)
    if result.fault is Fault.REFUSED and result.status is not Status.STALLED:
        raise PublishError(f"run {result.run_id}: {result.error}")
    return result


def drain_outbox_once(
    *,
    session_factory: SessionFactory | None = None,
    publisher: Sink | None = None,
    settings: Settings | None = None,
) -> PassResult:
    """Make one pass over every active run with pending events (``drain.drain_pass``)."""
    store, sink, settings = _collaborators(session_factory, publisher, settings)
    return drain.drain_pass(store, sink, settings.limits)


def resume(
    run_ids: Sequence[uuid.UUID | str] | None, *, session_factory: SessionFactory | None = None
) -> list[uuid.UUID]:
    """Put parked runs back in service (all of them when ``run_ids`` is None).

    Returns the runs resumed (named runs that were not parked are not); their attempts
    start again from zero.
    """
    ids = None if run_ids is None else _run_ids(run_ids)
    store = SqlStore(session_factory) if session_factory else runtime.current().store
    return store.resume(ids)
