"""History: does a long published history slow down dispatch or a drain?

The same 1,000 pending events (10 runs of 100) sit in two databases: one with nothing else in
its tables, and the bench's own, which also holds 2,000,000 already-published events of other
runs (20,000 runs of 100 events, cursors past the end, as the project leaves them), after a
VACUUM ANALYZE, as autovacuum would have run on a real table that size.

Timed, in this process, in the two databases by turns (so that whatever else the machine does
meanwhile weighs on both alike), each the median of several repetitions after untimed
warm-ups:

* dispatch: one call of the ``outbox.dispatch`` task body (finds the runs with pending events,
  takes their queued marks, sends the drain messages to the bench's queue, which no worker
  consumes; the messages and marks are deleted afterwards);
* drain: one ``drain_outbox_once()`` pass that publishes the 1,000 events.

Between repetitions the pending events are made pending again (published_at cleared, cursors
reset, streams deleted) and the tables vacuumed, so each repetition starts from the same state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import Iterator
from typing import Any

import psycopg

import tasks
from bench import env as bench_env
from bench import measure, project, seed, verify
from bench.context import Bench
from tasks import runtime

logger = logging.getLogger(__name__)

# Runs of 100 events: the history is then also 20,000 runs (rows in runs and run_outbox), so
# anything that scans per-run tables shows up too, not only what scans events.
HISTORY_EVENTS_PER_RUN = 100
WARM_UPS = 3

_UNPUBLISH = """
UPDATE run_events SET published_at = NULL WHERE run_id = ANY(%(ids)s::uuid[])
"""
_REWIND = """
UPDATE run_outbox SET next_seq = 1, last_published_at = NULL WHERE run_id = ANY(%(ids)s::uuid[])
"""


@dataclasses.dataclass
class _State:
    """One database the pending events are drained from, and the times measured there."""

    label: str
    env: bench_env.BenchEnv
    conn: psycopg.Connection
    in_process: project.InProcess
    dispatch_ms: list[float] = dataclasses.field(default_factory=list)
    drain_ms: list[float] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "dispatch_ms": round(statistics.median(self.dispatch_ms), 2),
            "drain_ms": round(statistics.median(self.drain_ms), 2),
            "dispatch_reps_ms": [round(v, 2) for v in self.dispatch_ms],
            "drain_reps_ms": [round(v, 2) for v in self.drain_ms],
        }


def run(bench: Bench) -> dict[str, Any]:
    """Time dispatch and drain without, then with, the published history."""
    sizes, client = bench.sizes, bench.redis
    pending_ids = seed.make_run_ids(sizes.history_runs, "history-pending")
    history_runs = max(sizes.history_published // HISTORY_EVENTS_PER_RUN, 1)
    history_ids = seed.make_run_ids(history_runs, "history-published")
    pending = sizes.history_runs * sizes.history_events
    with contextlib.ExitStack() as stack:
        baseline = stack.enter_context(_baseline_database(bench.env))
        states = [
            _state(stack, "no history", baseline),
            _state(stack, f"{sizes.history_published} published", bench.env),
        ]
        stack.callback(runtime.reset)  # the dispatch task was pointed at these databases
        for state in states:
            seed.reset(state.conn, client, state.env)
            seed.seed_runs(state.conn, pending_ids, sizes.history_events)
        started = time.monotonic()
        published = seed.seed_runs(
            states[1].conn, history_ids, HISTORY_EVENTS_PER_RUN, published=True, chunk=100
        )
        logger.info(
            "history: added %d published events in %.1fs", published, time.monotonic() - started
        )
        for state in states:
            seed.settle(state.conn)
        measure.wait_quiet()
        for rep in range(WARM_UPS + sizes.history_reps):
            # By turns, and in alternating order, so neither side is always first.
            for state in states if rep % 2 == 0 else reversed(states):
                dispatch_ms, drain_ms = _repetition(bench, state, pending_ids, pending)
                if rep >= WARM_UPS:
                    state.dispatch_ms.append(dispatch_ms)
                    state.drain_ms.append(drain_ms)
        seed.reset(states[1].conn, client, bench.env)
    without, with_history = (state.summary() for state in states)
    for state, summary in zip(states, (without, with_history), strict=True):
        logger.info(
            "history (%s): dispatch %.2f ms, drain of %d events %.2f ms (medians of %d)",
            state.label,
            summary["dispatch_ms"],
            pending,
            summary["drain_ms"],
            len(state.drain_ms),
        )
    return {
        "pending_events": pending,
        "pending_runs": sizes.history_runs,
        "published_events": published,
        "reps": sizes.history_reps,
        "none": without,
        "history": with_history,
        "dispatch_ratio": round(with_history["dispatch_ms"] / without["dispatch_ms"], 3),
        "drain_ratio": round(with_history["drain_ms"] / without["drain_ms"], 3),
    }


@contextlib.contextmanager
def _baseline_database(env: bench_env.BenchEnv) -> Iterator[bench_env.BenchEnv]:
    """A second bench database for the side without history; always dropped."""
    baseline = dataclasses.replace(
        env, database_url=env.database_url.set(database=f"{env.database}_nohistory")
    )
    bench_env.create_database(baseline)
    try:
        bench_env.migrate_database(baseline)
        yield baseline
    finally:
        bench_env.drop_database(baseline)


def _state(stack: contextlib.ExitStack, label: str, env: bench_env.BenchEnv) -> _State:
    conn = stack.enter_context(psycopg.connect(env.conninfo, autocommit=True))
    in_process = project.InProcess.build(env.database_url)
    stack.callback(in_process.close)
    return _State(label, env, conn, in_process)


def _repetition(
    bench: Bench, state: _State, pending_ids: list[Any], pending: int
) -> tuple[float, float]:
    """Dispatch, then drain, the pending events in ``state``'s database; return both in ms."""
    client, in_process = bench.redis, state.in_process
    runtime.configure(
        in_process.settings,
        session_factory=in_process.session_factory,
        redis_client=in_process.publisher.client,
        sink=in_process.publisher,
    )
    start = time.perf_counter()
    result = tasks.app.tasks["outbox.dispatch"]()
    dispatch_s = time.perf_counter() - start
    if result.get("enqueued") != len(pending_ids):
        raise measure.BenchError(f"history dispatch queued {result}, not the pending runs")
    # Nobody consumes the bench queue here: drop the messages and the marks they hold.
    bench_env.delete_matching(client, state.env.queue)
    bench_env.delete_matching(client, state.env.queued_prefix)

    start = time.perf_counter()
    drained = tasks.drain_outbox_once(
        session_factory=in_process.session_factory,
        publisher=in_process.publisher,
        settings=in_process.settings,
    )
    drain_s = time.perf_counter() - start
    if drained.published != pending or drained.status != tasks.Status.DRAINED:
        raise measure.BenchError(f"history drain: {drained}, expected {pending} published")
    verify.verify(state.conn, client, state.env, complete=True, full=True, run_ids=pending_ids)
    # Back to the same pending state for the next repetition.
    state.conn.execute(_UNPUBLISH, {"ids": pending_ids})
    state.conn.execute(_REWIND, {"ids": pending_ids})
    client.unlink(*(state.env.stream_key(rid) for rid in pending_ids))
    state.conn.execute("VACUUM (ANALYZE) run_events, run_outbox")
    return 1000 * dispatch_s, 1000 * drain_s
