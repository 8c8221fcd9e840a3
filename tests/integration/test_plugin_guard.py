"""The guard with no foreign drainer attached: silent, and cheap next to the drain it precedes.
(Its firing on a real leftover worker is tests/e2e/test_guard.py.)"""

from __future__ import annotations

import statistics
import time
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import append_event, create_run
from models.db import application_name
from tasks import api
from tasks.settings import Settings
from tasks.testing.drainer import Drainer
from tasks.testing.guard import Guard
from tasks.testing.sinks import Streams

RUNS = 150
WARM_UP = 20  # the first drains fill the pools and the statement caches


def seed_runs(Session: sessionmaker[Session], runs: int) -> list[uuid.UUID]:
    with Session() as session, session.begin():
        ids = [create_run(session).id for _ in range(runs)]
        for run_id in ids:
            append_event(session, run_id, "seeded", {"n": 1})
    return ids


def test_with_only_this_process_attached_the_guard_is_silent_and_the_drain_runs(
    outbox_session_factory: sessionmaker[Session],
    outbox_drain: Drainer,
    outbox_guard: Guard,
) -> None:
    [run_id] = seed_runs(outbox_session_factory, 1)

    drained = outbox_drain.run(run_id)

    assert drained.published == 1
    with outbox_session_factory() as session:  # holds a second connection of this process
        session.execute(text("SELECT 1"))
        # This process's own connections name it, and are not foreign.
        assert application_name() in {s.application_name for s in outbox_guard.sessions()}
        assert outbox_guard.foreign() == []


def test_the_guard_costs_a_small_fraction_of_the_drain_it_precedes(
    outbox_session_factory: sessionmaker[Session],
    outbox_settings: Settings,
    outbox_sink: Streams,
    outbox_guard: Guard,
) -> None:
    runs = seed_runs(outbox_session_factory, RUNS)
    checks, drains = [], []
    for run_id in runs:  # interleaved, so that the machine's load weighs on both alike
        started = time.perf_counter()
        outbox_guard.check()
        checked = time.perf_counter()
        api.drain_outbox_for_run(
            run_id,
            session_factory=outbox_session_factory,
            publisher=outbox_sink.publisher,
            settings=outbox_settings,
        )
        drained = time.perf_counter()
        checks.append(checked - started)
        drains.append(drained - checked)

    check, drain = statistics.median(checks[WARM_UP:]), statistics.median(drains[WARM_UP:])
    ratio = check / drain
    print(
        f"guard {check * 1e3:.3f} ms, drain of a run of one event {drain * 1e3:.3f} ms "
        f"(medians of {RUNS - WARM_UP}): the guard costs {ratio:.2f}x a drain"
    )
    # One query on pg_stat_activity against the drain's seven round trips and a Lua call.
    assert ratio < 0.3
