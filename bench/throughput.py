"""Throughput workloads (deep, wide): every implementation drains the same backlog, interleaved.

Each repetition resets the database and the streams and seeds the same runs and payloads, then
times one implementation from "all events committed, go" until no event is unpublished, then
verifies every stream. The order of the implementations rotates from one repetition to the
next (A B C D, B C D A, ...), so slow drift of the machine (autovacuum, page cache, thermal)
is spread over all of them; the result is each one's median.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
import uuid
from typing import Any

from bench import measure, project, relays, seed, verify
from bench.context import Bench

logger = logging.getLogger(__name__)

E2E = "project-e2e"
IN_PROCESS = "project-inproc"
IMPLEMENTATIONS = (E2E, IN_PROCESS, relays.IDEAL, relays.PER_ROW)
# A repetition during which processes other than the bench's (and PostgreSQL's and Redis's)
# kept more than this many cores busy on average measured a shared machine, not the
# implementation: it is repeated, up to RETRIES times, and the discarded ones are reported.
FOREIGN_CORES = 0.25
RETRIES = 2


def describe(workers: int) -> dict[str, str]:
    """One line per implementation, for the report."""
    return {
        E2E: f"celery worker --pool=prefork --concurrency={workers}, fed by outbox.dispatch "
        "every 1 s; from the first dispatch (all events committed) to the last entry",
        IN_PROCESS: "drain_outbox_once() in a loop in 1 process, no broker",
        relays.IDEAL: f"plain psycopg + redis-py, {workers} processes, 500 events per "
        "transaction (FOR UPDATE SKIP LOCKED, pipelined XADD, one UPDATE ... ANY)",
        relays.PER_ROW: f"plain psycopg + redis-py, {workers} processes, 1 event per transaction",
    }


def run(bench: Bench, name: str, runs: int, events_per_run: int) -> dict[str, Any]:
    """Run workload ``name`` (``runs`` x ``events_per_run`` pending) and summarise it."""
    env, conn, client = bench.env, bench.conn, bench.redis
    run_ids = seed.make_run_ids(runs, name)
    total = runs * events_per_run
    timeout = max(600.0, total / 50)
    reps: dict[str, list[measure.Measurement]] = {impl: [] for impl in IMPLEMENTATIONS}
    discarded: dict[str, list[measure.Measurement]] = {impl: [] for impl in IMPLEMENTATIONS}
    worker = project.start_worker(env, bench.workdir, bench.workers, tag=name)
    in_process = project.InProcess.build()
    try:
        warm = project.warm_up(conn, client, env, worker, bench.workers)
        logger.info("%s: worker up and warm in %.1fs", name, warm)
        for rep in range(bench.reps):
            shift = rep % len(IMPLEMENTATIONS)
            for impl in IMPLEMENTATIONS[shift:] + IMPLEMENTATIONS[:shift]:
                label = f"{name} rep {rep + 1}/{bench.reps} {impl}"
                for attempt in range(1 + RETRIES):
                    result = _repetition(
                        bench, label, impl, worker, in_process, (run_ids, events_per_run), timeout
                    )
                    foreign = result.cpu.get("other", 0.0) / result.seconds
                    # CPU times tick every 10 ms: too coarse to judge runs shorter than this.
                    if result.seconds < 2 or foreign <= FOREIGN_CORES or attempt == RETRIES:
                        break
                    logger.warning(
                        "%s: %.2f cores busy outside the bench's processes during the run "
                        "(another program); repeating it",
                        label,
                        foreign,
                    )
                    discarded[impl].append(result)
                reps[impl].append(result)
    finally:
        worker.stop()
        in_process.close()
        seed.reset(conn, client, env)
    summary = summarise(name, runs, events_per_run, reps, bench.workers)
    for impl, results in discarded.items():
        if results:
            summary["implementations"][impl]["discarded"] = [m.as_dict() for m in results]
    return summary


def _repetition(
    bench: Bench,
    label: str,
    impl: str,
    worker: project.CeleryProcess,
    in_process: project.InProcess,
    data: tuple[list[uuid.UUID], int],
    timeout: float,
) -> measure.Measurement:
    """Reseed (``data``: the runs and their event count), time one implementation, verify."""
    conn, client, env = bench.conn, bench.redis, bench.env
    run_ids, events_per_run = data
    seeded = time.monotonic()
    total = seed.reseed(conn, client, env, run_ids, events_per_run)
    logger.info("%s: seeded %d events in %.1fs", label, total, time.monotonic() - seeded)
    # Another program's burst of work would be measured too: give it a minute to pass.
    busy, waited = measure.wait_quiet()
    if busy > measure.QUIET_BUSY_PCT:
        logger.warning("%s: the machine is still %.0f%% busy after %.0fs", label, busy, waited)
    elif waited >= 1:
        logger.info("%s: waited %.0fs for the machine to be quiet", label, waited)
    result = dataclasses.replace(
        _run_one(bench, impl, worker, in_process, total, timeout),
        background_busy_pct=round(busy, 1),
    )
    checked = verify.verify(
        conn, client, env, complete=not result.capped, full=bench.sizes.verify_full
    )
    logger.info(
        "%s: %d events in %.2fs = %.0f events/s%s, cpu idle %.0f%%, "
        "cpu s client %s postgres %s redis %s other %s; verified %d entries",
        label,
        result.events,
        result.seconds,
        result.rate,
        " (time budget hit)" if result.capped else "",
        result.cpu_idle_pct,
        result.cpu.get("client"),
        result.cpu.get("postgres"),
        result.cpu.get("redis"),
        result.cpu.get("other"),
        checked,
    )
    return result


def _run_one(
    bench: Bench,
    impl: str,
    worker: project.CeleryProcess,
    in_process: project.InProcess,
    total: int,
    timeout: float,
) -> measure.Measurement:
    if impl == E2E:
        split = measure.CpuSplit(bench.conn, bench.redis_pid, measure.tree(worker.pid))
        return project.end_to_end(bench.conn, bench.env, worker, total, split, timeout=timeout)
    if impl == IN_PROCESS:
        split = measure.CpuSplit(bench.conn, bench.redis_pid, [os.getpid()])
        return in_process.drain_all(total, split, timeout=timeout)
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
        split = measure.CpuSplit(bench.conn, bench.redis_pid, pool.pids())
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
        idle, cpu = split.stop()
        return measure.Measurement(moved, end - start, idle, capped=capped, cpu=cpu)
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
            # Where the CPU went, per event: the implementation's processes, PostgreSQL, Redis.
            "cpu_us_per_event": {
                role: round(statistics.median(1e6 * m.cpu[role] / m.events for m in ms), 1)
                for role in ("client", "postgres", "redis")
                if all(role in m.cpu and m.events for m in ms)
            },
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
