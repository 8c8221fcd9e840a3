"""Throughput workloads (deep, wide): every implementation drains the same backlog, interleaved.

Each repetition resets the database and the streams and seeds the same runs and payloads, then
times one implementation from "all events committed, go" until no event is unpublished, then
verifies every stream. The order of the implementations rotates from one repetition to the
next (A B C D, B C D A, ...), so slow drift of the machine (autovacuum, page cache, thermal)
is spread over all of them; the result is each one's median.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from bench import measure, project, relays, seed, verify
from bench.context import Bench

logger = logging.getLogger(__name__)

E2E = "project-e2e"
IN_PROCESS = "project-inproc"
IMPLEMENTATIONS = (E2E, IN_PROCESS, relays.IDEAL, relays.PER_ROW)


def describe(workers: int) -> dict[str, str]:
    """One line per implementation, for the report."""
    return {
        E2E: f"project end to end: celery worker, prefork, {workers} processes, fed by "
        "outbox.dispatch every 1 s",
        IN_PROCESS: "project in-process: drain_outbox_once() loop, 1 process, no broker",
        relays.IDEAL: f"ideal relay: plain psycopg + redis-py, {workers} processes, "
        "batch of 500 per transaction",
        relays.PER_ROW: f"per-row relay: plain psycopg + redis-py, {workers} processes, "
        "1 event per transaction",
    }


def run(bench: Bench, name: str, runs: int, events_per_run: int) -> dict[str, Any]:
    """Run workload ``name`` (``runs`` x ``events_per_run`` pending) and summarise it."""
    env, conn, client = bench.env, bench.conn, bench.redis
    run_ids = seed.make_run_ids(runs, name)
    total = runs * events_per_run
    timeout = max(600.0, total / 50)
    reps: dict[str, list[measure.Measurement]] = {impl: [] for impl in IMPLEMENTATIONS}
    worker = project.start_worker(env, bench.workdir, bench.workers, tag=name)
    in_process = project.InProcess.build()
    try:
        warm = project.warm_up(conn, client, env, worker, bench.workers)
        logger.info("%s: worker up and warm in %.1fs", name, warm)
        for rep in range(bench.reps):
            shift = rep % len(IMPLEMENTATIONS)
            for impl in IMPLEMENTATIONS[shift:] + IMPLEMENTATIONS[:shift]:
                seeded = time.monotonic()
                seed.reseed(conn, client, env, run_ids, events_per_run)
                logger.info(
                    "%s rep %d/%d %s: seeded %d events in %.1fs",
                    name,
                    rep + 1,
                    bench.reps,
                    impl,
                    total,
                    time.monotonic() - seeded,
                )
                result = _run_one(bench, impl, worker, in_process, total, timeout)
                checked = verify.verify(
                    conn, client, env, complete=not result.capped, full=bench.sizes.verify_full
                )
                logger.info(
                    "%s rep %d/%d %s: %d events in %.2fs = %.0f events/s%s, cpu idle %.0f%%, "
                    "verified %d entries",
                    name,
                    rep + 1,
                    bench.reps,
                    impl,
                    result.events,
                    result.seconds,
                    result.rate,
                    " (time budget hit)" if result.capped else "",
                    result.cpu_idle_pct,
                    checked,
                )
                reps[impl].append(result)
    finally:
        worker.stop()
        in_process.close()
        seed.reset(conn, client, env)
    return summarise(name, runs, events_per_run, reps, bench.workers)


def _run_one(
    bench: Bench,
    impl: str,
    worker: project.CeleryProcess,
    in_process: project.InProcess,
    total: int,
    timeout: float,
) -> measure.Measurement:
    if impl == E2E:
        return project.end_to_end(bench.conn, bench.env, worker, total, timeout=timeout)
    if impl == IN_PROCESS:
        return in_process.drain_all(total, timeout=timeout)
    budget = bench.sizes.per_row_seconds if impl == relays.PER_ROW else None
    return run_relays(bench, impl, total, timeout=timeout, budget=budget)


def run_relays(
    bench: Bench, kind: str, total: int, *, timeout: float, budget: float | None
) -> measure.Measurement:
    """Time ``bench.workers`` relay processes of ``kind`` (connected before the clock starts)."""
    env = bench.env
    pool = relays.pool(kind, bench.workers, env.conninfo, env.redis_url, env.stream_prefix)
    try:
        pool.launch()
        cpu = measure.CpuTimes.now()
        start = time.monotonic()
        pool.go()
        end, capped = measure.wait_published(
            bench.conn, timeout=timeout, budget=budget, tick=lambda _elapsed: pool.check()
        )
        if capped:
            pool.halt()
        moved = pool.finish()
        if capped:
            end = time.monotonic()  # every relay has committed its last transaction
        elif moved != total:
            raise measure.BenchError(f"{kind} relays moved {moved} of {total} events")
        return measure.Measurement(
            moved, end - start, measure.CpuTimes.now().idle_since(cpu), capped=capped
        )
    finally:
        pool.close()


def summarise(
    name: str,
    runs: int,
    events_per_run: int,
    reps: dict[str, list[measure.Measurement]],
    workers: int,
) -> dict[str, Any]:
    """Medians per implementation and their ratios to the ideal and per-row relays."""
    medians = {impl: statistics.median(m.rate for m in ms) for impl, ms in reps.items() if ms}
    ideal = medians.get(relays.IDEAL) or float("nan")
    per_row = medians.get(relays.PER_ROW) or float("nan")
    implementations = {
        impl: {
            "description": describe(workers)[impl],
            "events_per_s": round(medians[impl], 1),
            "vs_ideal": round(medians[impl] / ideal, 3),
            "vs_per_row": round(medians[impl] / per_row, 2),
            "capped": any(m.capped for m in ms),
            "reps": [m.as_dict() for m in ms],
        }
        for impl, ms in reps.items()
        if ms
    }
    return {
        "runs": runs,
        "events_per_run": events_per_run,
        "events": runs * events_per_run,
        "implementations": implementations,
    }
