"""History: does a long published history slow down dispatch or a drain?

The same 1,000 pending events (10 runs of 100) are timed twice: first in otherwise empty
tables, then with 2,000,000 already-published events of other runs in them (20,000 runs of 100
events, cursors past the end, as the project leaves them), after a VACUUM ANALYZE, as
autovacuum would have run on a real table that size.

Timed, in this process, each the median of several repetitions, after the machine is quiet and
after untimed warm-ups (right after a bulk load of 2,000,000 rows, the first repetitions run
while the server and the kernel still write it out: that is the load, not the history):

* dispatch: one call of the ``outbox.dispatch`` task body (finds the runs with pending events,
  takes their queued marks, sends the drain messages to the bench's queue, which no worker
  consumes; the messages and marks are deleted afterwards);
* drain: one ``drain_outbox_once()`` pass that publishes the 1,000 events.

Between repetitions the pending events are made pending again (published_at cleared, cursors
reset, streams deleted) and the tables vacuumed, so each repetition starts from the same state.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import tasks
from bench import env as bench_env
from bench import measure, project, seed, verify
from bench.context import Bench

logger = logging.getLogger(__name__)

WARM_UPS = 3
QUIET_BUSY_PCT = 15

# Runs of 100 events: the history is then also 20,000 runs (rows in runs and run_outbox), so
# anything that scans per-run tables shows up too, not only what scans events.
HISTORY_EVENTS_PER_RUN = 100

_UNPUBLISH = """
UPDATE run_events SET published_at = NULL WHERE run_id = ANY(%(ids)s::uuid[])
"""
_REWIND = """
UPDATE run_outbox SET next_seq = 1, last_published_at = NULL WHERE run_id = ANY(%(ids)s::uuid[])
"""


def run(bench: Bench) -> dict[str, Any]:
    """Time dispatch and drain without, then with, the published history."""
    sizes, conn, client, env = bench.sizes, bench.conn, bench.redis, bench.env
    pending_ids = seed.make_run_ids(sizes.history_runs, "history-pending")
    history_runs = max(sizes.history_published // HISTORY_EVENTS_PER_RUN, 1)
    history_ids = seed.make_run_ids(history_runs, "history-published")
    pending = sizes.history_runs * sizes.history_events
    in_process = project.InProcess.build()
    try:
        seed.reset(conn, client, env)
        seed.seed_runs(conn, pending_ids, sizes.history_events)
        seed.settle(conn)
        without = _phase(bench, in_process, pending_ids, pending, "no history")
        started = time.monotonic()
        published = seed.seed_runs(
            conn, history_ids, HISTORY_EVENTS_PER_RUN, published=True, chunk=100
        )
        seed.settle(conn)
        logger.info(
            "history: added %d published events in %.1fs", published, time.monotonic() - started
        )
        with_history = _phase(bench, in_process, pending_ids, pending, f"{published} published")
    finally:
        in_process.close()
        seed.reset(conn, client, env)
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


def _phase(
    bench: Bench,
    in_process: project.InProcess,
    pending_ids: list[Any],
    pending: int,
    label: str,
) -> dict[str, Any]:
    conn, client, env = bench.conn, bench.redis, bench.env
    dispatch_task = tasks.app.tasks["outbox.dispatch"]
    dispatch_ms: list[float] = []
    drain_ms: list[float] = []
    busy, waited = measure.wait_quiet(QUIET_BUSY_PCT, patience=60)
    if busy > QUIET_BUSY_PCT:
        logger.warning(
            "history (%s): the machine is still %.0f%% busy after %.0fs", label, busy, waited
        )
    for rep in range(WARM_UPS + bench.sizes.history_reps):
        start = time.perf_counter()
        result = dispatch_task()
        dispatch_s = time.perf_counter() - start
        if result.get("enqueued") != len(pending_ids):
            raise measure.BenchError(f"history dispatch queued {result}, not the pending runs")
        # Nobody consumes the bench queue here: drop the messages and the marks they hold.
        bench_env.delete_matching(client, env.queue)
        bench_env.delete_matching(client, env.queued_prefix)

        start = time.perf_counter()
        drained = tasks.drain_outbox_once(
            session_factory=in_process.session_factory,
            publisher=in_process.publisher,
            settings=in_process.settings,
        )
        drain_s = time.perf_counter() - start
        if drained.published != pending or drained.status != tasks.Status.DRAINED:
            raise measure.BenchError(f"history drain: {drained}, expected {pending} published")
        verify.verify(conn, client, env, complete=True, full=True, run_ids=pending_ids)
        if rep >= WARM_UPS:
            dispatch_ms.append(1000 * dispatch_s)
            drain_ms.append(1000 * drain_s)
        # Back to the same pending state for the next repetition.
        conn.execute(_UNPUBLISH, {"ids": pending_ids})
        conn.execute(_REWIND, {"ids": pending_ids})
        client.unlink(*(env.stream_key(rid) for rid in pending_ids))
        conn.execute("VACUUM (ANALYZE) run_events, run_outbox")
    out = {
        "dispatch_ms": round(statistics.median(dispatch_ms), 2),
        "drain_ms": round(statistics.median(drain_ms), 2),
        "dispatch_reps_ms": [round(v, 2) for v in dispatch_ms],
        "drain_reps_ms": [round(v, 2) for v in drain_ms],
    }
    logger.info(
        "history (%s): dispatch %.2f ms, drain of %d events %.2f ms (medians of %d)",
        label,
        out["dispatch_ms"],
        pending,
        out["drain_ms"],
        len(drain_ms),
    )
    return out
