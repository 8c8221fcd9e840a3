"""Memory: the RSS of a worker's pool process while it drains a large backlog.

One prefork worker with ``--concurrency=1`` drains every event (1,000,000 in 100 runs at full
size), fed by dispatch every second. Every ~100 ms the bench samples the pool child's RSS
(through psutil) together with the number of events published so far (the sum of the cursors).
The baseline is the RSS once 10,000 events are out; a leak shows as growth beyond it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bench import measure, project, seed, verify
from bench.context import Bench

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.1
FULL_VERIFY_LIMIT = 250_000  # above this, XLEN and end ids only (reading 1M entries is slow)


def run(bench: Bench) -> dict[str, Any]:
    """Drain the backlog with one pool process and sample its RSS."""
    sizes, conn, client, env = bench.sizes, bench.conn, bench.redis, bench.env
    run_ids = seed.make_run_ids(sizes.memory_runs, "memory")
    per_run = sizes.memory_events // sizes.memory_runs
    total = per_run * sizes.memory_runs
    worker = project.start_worker(env, bench.workdir, 1, tag="memory")
    samples: list[tuple[float, int, int]] = []  # (seconds, published, rss KiB)
    pids: set[int] = set()
    try:
        project.warm_up(conn, client, env, worker, 1)
        started = time.monotonic()
        seed.reseed(conn, client, env, run_ids, per_run)
        logger.info("memory: seeded %d events in %.1fs", total, time.monotonic() - started)
        child = _pool_child(worker)
        dispatch = project.dispatcher(env, [worker])
        last = [-SAMPLE_INTERVAL]
        next_log = [10.0]

        def tick(elapsed: float) -> None:
            dispatch(elapsed)
            if elapsed - last[0] >= SAMPLE_INTERVAL:
                last[0] = elapsed
                pids.update(measure.children(worker.pid))
                rss = measure.rss_kib(child)
                done = measure.published_count(conn)
                samples.append((elapsed, done, rss))
                if elapsed >= next_log[0]:
                    next_log[0] += 10.0
                    logger.info("memory: %d events out, RSS %.1f MiB", done, rss / 1024)

        cpu = measure.CpuTimes.now()
        start = time.monotonic()
        end, _ = measure.wait_published(
            conn, timeout=max(600.0, total / 200), interval=0.02, tick=tick
        )
        result = measure.Measurement(total, end - start, measure.CpuTimes.now().idle_since(cpu))
        rss, hwm = measure.rss_kib(child), measure.peak_rss_kib(child)
        samples.append((end - start, measure.published_count(conn), rss))
        verify.verify(
            conn, client, env, complete=True, full=total <= FULL_VERIFY_LIMIT and sizes.verify_full
        )
    finally:
        worker.stop()
        seed.reset(conn, client, env)
    baseline = next((s for s in samples if s[1] >= sizes.memory_baseline), samples[-1])
    after = [s[2] for s in samples if s[1] >= baseline[1]]
    peak = max(after)
    out = {
        "events": total,
        "runs": sizes.memory_runs,
        "worker": "celery worker --pool=prefork --concurrency=1 (the pool child is measured)",
        "events_per_s": round(result.rate, 1),
        "seconds": round(result.seconds, 2),
        "cpu_idle_pct": round(result.cpu_idle_pct, 1),
        "baseline_events": baseline[1],
        "baseline_rss_mib": round(baseline[2] / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "vm_hwm_mib": round(hwm / 1024, 1),
        "ratio": round(peak / baseline[2], 3),
        "pool_children_seen": len(pids - {0}),
        "samples": [
            {"s": round(t, 2), "published": n, "rss_mib": round(r / 1024, 2)} for t, n, r in samples
        ],
    }
    logger.info(
        "memory: %d events at %.0f/s; RSS %.1f MiB after %d events, peak %.1f MiB (%.2fx)",
        total,
        result.rate,
        out["baseline_rss_mib"],
        baseline[1],
        out["peak_rss_mib"],
        out["ratio"],
    )
    return out


def _pool_child(worker: project.CeleryProcess) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = measure.children(worker.pid)
        if len(found) == 1:
            return found[0]
        worker.check()
        time.sleep(0.1)
    raise measure.BenchError(f"expected one pool process under worker {worker.pid}")
