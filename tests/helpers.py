"""Small helpers the tests share: seeding, reading streams back, waiting on a condition."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis
from click.testing import CliRunner, Result
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import RunEvent, RunOutbox, append_event, create_run
from tasks import api, runtime
from tasks.cli import main
from tasks.redis_sink import read_stream, stream_key
from tasks.sink import StreamEntry


def seed(
    Session: sessionmaker[Session],
    runs: int = 1,
    events: int = 3,
) -> list[uuid.UUID]:
    """Create ``runs`` runs with ``events`` events each, committed; return their ids."""
    ids = []
    with Session() as session, session.begin():
        for _ in range(runs):
            run = create_run(session)
            for n in range(1, events + 1):
                append_event(session, run.id, "seeded", {"n": n})
            ids.append(run.id)
    return ids


def append(
    Session: sessionmaker[Session], run_id: uuid.UUID, count: int, *, kick: bool | None = None
) -> None:
    """Append ``count`` events to a run in one committed transaction."""
    with Session() as session, session.begin():
        for n in range(count):
            append_event(session, run_id, "appended", {"n": n}, kick=kick)


def stream_seqs(client: redis.Redis, prefix: str, run_id: uuid.UUID) -> list[int]:
    """Return every seq in the run's stream, in stream order."""
    seqs: list[int] = []
    while True:
        entries = read_stream(client, prefix, run_id, after=seqs[-1] if seqs else 0)
        if not entries:
            return seqs
        seqs.extend(e.seq for e in entries)


def db_state(Session: sessionmaker[Session], run_id: uuid.UUID) -> tuple[int, int, int]:
    """Return (next_seq, published events, unpublished events) of a run."""
    with Session() as session:
        next_seq = session.scalar(select(RunOutbox.next_seq).where(RunOutbox.run_id == run_id))
        flags = session.scalars(
            select(RunEvent.published_at.is_not(None)).where(RunEvent.run_id == run_id)
        ).all()
    return int(next_seq or 0), sum(flags), len(flags) - sum(flags)


def came_true(condition: Callable[[], object], timeout: float) -> bool:
    """Poll ``condition`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    if not came_true(condition, timeout):
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unreachable_redis() -> redis.Redis:
    """A client for a port nothing listens on: every call fails at once, without retries."""
    return redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


def cli(*args: object) -> Result:
    """Run ``outbox ARGS...`` in this process, as an operator would type it."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def published(Session: sessionmaker[Session], runs: int = 1, events: int = 3) -> list[uuid.UUID]:
    """Seed runs and drain them into this test's streams."""
    run_ids = seed(Session, runs=runs, events=events)
    for run_id in run_ids:
        assert api.drain_outbox_for_run(run_id).published == events
    return run_ids


def entries(current: runtime.Runtime, run_id: uuid.UUID) -> list[StreamEntry]:
    """The entries of ``run_id``'s stream, read through the runtime's Redis."""
    return read_stream(current.redis, current.settings.stream_prefix, run_id)


def key(current: runtime.Runtime, run_id: uuid.UUID) -> str:
    """The Redis key of ``run_id``'s stream under the runtime's prefix."""
    return stream_key(current.settings.stream_prefix, run_id)
