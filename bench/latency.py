"""Steady latency: producers append at a fixed rate; a consumer times each event's arrival.

Producers (spawned processes, a few threads each) append one event per transaction with the
project's own ``append_event``, round-robin over the runs, on a deadline schedule: event k is
due at ``start + k / rate``, so a late event never delays the ones after it (no drift). Each
payload carries ``t``, the wall-clock time stamped immediately before ``append_event``; the
commit follows within about a millisecond (the producer's UPDATE, INSERT and COMMIT), and the
reported latency includes that millisecond, so it is an upper bound on commit-to-stream time.
The producers' own median append-and-commit time is reported next to it.

The consumers (spawned processes, each with a share of the streams) read with one
``XREAD BLOCK`` call over their streams' keys and record, per entry, the time the reply
arrived minus ``t``. Redis and the client pay per key in every call, so the streams are split:
one process over all 500 keys cost half a core at 250 events/s, more than the publisher.

The project runs as in production: a prefork worker plus beat (dispatch every 1 s). Mode
``kick``: producers pass ``kick=True`` (beat still runs, as the safety net it is in a real
deployment); mode ``beat``: producers pass ``kick=False`` and only beat's dispatch drains.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import multiprocessing as mp
import multiprocessing.synchronize as mp_sync
import os
import queue
import statistics
import threading
import time
import traceback
import uuid
from typing import Any

import redis

from bench import measure, project, seed, verify
from bench.context import Bench

logger = logging.getLogger(__name__)

KICK = "kick"
BEAT = "beat"
# The kick once more at a quarter of the rate: at the full rate the producers and PostgreSQL
# alone take most of 2 cores, and the kick's target asks for a machine that is not saturated.
KICK_LIGHT = "kick-light"
LIGHT_SHARE = 0.25
PRODUCER_PROCESSES = 2
THREADS_PER_PRODUCER = 4
_PAD = "x" * 150  # payloads of ~200 bytes as JSON, like the throughput workloads'
READ_INTERVAL = 0.002  # seconds; the consumers' arrival times are late by at most this
CONSUMER_PROCESSES = 4


def kick_supported() -> bool:
    """Whether the project's append_event takes ``kick`` (the kick-on-commit API)."""
    from models import append_event

    return "kick" in inspect.signature(append_event).parameters


@dataclasses.dataclass(frozen=True)
class ProducerSpec:
    """What one producer process appends: its share of the global event sequence."""

    index: int
    run_ids: list[uuid.UUID]
    rate: float  # all producers together
    total: int  # events, all producers together
    strands: int  # producer threads, all processes together
    kick: bool


@dataclasses.dataclass
class ProducerReport:
    """What a producer process did."""

    produced: int = 0
    late: int = 0  # events started more than 10 ms after their due time
    max_lag: float = 0.0
    append_commit: list[float] = dataclasses.field(default_factory=list)  # seconds
    cpu_seconds: float = 0.0  # the process's CPU time while producing (all threads)
    error: str | None = None


def _produce(
    spec: ProducerSpec,
    parent: int,
    strand: int,
    warmed: threading.Barrier,
    go: mp_sync.Event,
    start_at: Any,
    report: ProducerReport,
    lock: threading.Lock,
) -> None:
    from sqlalchemy.orm import Session

    from models import append_event
    from models.db import session_factory
    from tasks import outbox

    outbox.kick  # noqa: B018 - importing it registers the kicker, as a kicking producer does

    factory = session_factory()
    runs = spec.run_ids
    session: Session
    # Warm-up: this thread's connection, the Celery app and (in kick mode) the broker
    # connection are made now, not on the first timed event. No "t": the consumer skips it.
    with factory() as session, session.begin():
        append_event(session, runs[strand % len(runs)], "warm-up", {"pad": _PAD}, kick=spec.kick)
    warmed.wait()
    if not measure.wait_event(go, parent):
        return
    start = start_at.value
    end = start + spec.total / spec.rate
    for k in range(strand, spec.total, spec.strands):
        due = start + k / spec.rate
        now = time.monotonic()
        if now >= end:
            # Bounded: a producer that fell behind stops on time rather than catching up, so
            # the window stays the same; the achieved rate and skipped events are reported.
            break
        lag = now - due
        if lag < 0:
            time.sleep(-lag)
            lag = 0.0
        with factory() as session, session.begin():
            stamp = time.time()
            append_event(
                session, runs[k % len(runs)], "bench", {"t": stamp, "pad": _PAD}, kick=spec.kick
            )
        committed = time.time()
        with lock:
            report.produced += 1
            report.max_lag = max(report.max_lag, lag)
            report.late += lag > 0.01
            report.append_commit.append(committed - stamp)


def producer_main(
    spec: ProducerSpec,
    ready: mp.Queue[int],
    start_at: Any,  # mp.Value("d"): the monotonic start time, set by the parent before go
    go: mp_sync.Event,
    results: mp.Queue[ProducerReport],
) -> None:
    """Producer process: threads warm up, report ready, then produce on the schedule."""
    parent = measure.child_setup()
    report = ProducerReport()
    try:
        per_process = spec.strands // PRODUCER_PROCESSES
        warmed = threading.Barrier(per_process + 1, timeout=120)
        lock = threading.Lock()

        def strand(n: int) -> None:
            try:
                _produce(spec, parent, n, warmed, go, start_at, report, lock)
            except Exception:
                with lock:
                    report.error = report.error or traceback.format_exc()
                warmed.abort()  # the other threads and the process stop waiting for this one
                raise

        threads = [
            threading.Thread(target=strand, args=(spec.index * per_process + n,), daemon=True)
            for n in range(per_process)
        ]
        for thread in threads:
            thread.start()
        warmed.wait()
        ready.put(spec.index)
        measure.wait_event(go, parent)
        cpu = time.process_time()
        for thread in threads:
            thread.join()
        report.cpu_seconds = time.process_time() - cpu
    except Exception:
        report.error = report.error or traceback.format_exc()
        raise
    finally:
        results.put(report)  # the parent learns what happened, whatever it was


@dataclasses.dataclass
class ConsumerReport:
    """What the consumer saw, and what reading cost."""

    latencies: list[float] = dataclasses.field(default_factory=list)  # seconds
    reads: int = 0
    cpu_seconds: float = 0.0
    error: str | None = None


def consumer_main(
    redis_url: str,
    keys: list[str],
    ready: mp.Queue[int],
    stop: mp_sync.Event,
    received: Any,  # mp.Value("q"): timed entries seen so far
    results: mp.Queue[ConsumerReport],
) -> None:
    """Consumer process: XREAD BLOCK over its streams; latency = arrival - payload's ``t``."""
    parent = measure.child_setup()
    report = ConsumerReport()
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=30)
        last: dict[str | bytes, str | bytes] = dict.fromkeys(keys, "0-0")
        ready.put(0)
        cpu = time.process_time()
        called = 0.0
        counted = 0
        while not stop.is_set() and os.getppid() == parent:
            # An XREAD over hundreds of keys costs Redis work per key; when entries trickle in,
            # back-to-back calls would make the measuring dearer than what it measures. At
            # most one call per READ_INTERVAL: arrival times are late by at most that.
            pause = called + READ_INTERVAL - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            called = time.monotonic()
            reply: Any = client.xread(last, block=100, count=10_000)  # type: ignore[arg-type]
            arrived = time.time()
            report.reads += 1
            for key, entries in reply or ():
                for entry_id, fields in entries:
                    last[key.decode()] = entry_id
                    stamp = json.loads(fields[b"payload"]).get("t")
                    if stamp is not None:
                        report.latencies.append(arrived - stamp)
            with received.get_lock():  # shared by the consumers
                received.value += len(report.latencies) - counted
            counted = len(report.latencies)
        report.cpu_seconds = time.process_time() - cpu
    except Exception:
        report.error = traceback.format_exc()
        raise
    finally:
        results.put(report)


def run(bench: Bench) -> dict[str, Any]:
    """Each mode, one after the other, each with a fresh worker and beat."""
    out: dict[str, Any] = {
        "runs": bench.sizes.latency_runs,
        "rate": bench.sizes.latency_rate,
        "seconds": bench.sizes.latency_seconds,
        "producers": f"{PRODUCER_PROCESSES} processes x {THREADS_PER_PRODUCER} threads",
        "consumers": f"{CONSUMER_PROCESSES} processes, each XREAD BLOCK over its share of streams",
        "modes": {},
    }
    samples: dict[str, list[float]] = {}
    for mode in (KICK, BEAT, KICK_LIGHT):
        if mode != BEAT and not kick_supported():
            logger.warning("latency %s: append_event has no kick parameter; skipped", mode)
            out["modes"][mode] = {"skipped": "append_event has no kick parameter"}
            continue
        result, latencies = _run_mode(bench, mode)
        out["modes"][mode] = result
        samples[mode] = latencies
    out["samples"] = samples  # raw, for the chart; the report drops it from the JSON
    return out


def _run_mode(bench: Bench, mode: str) -> tuple[dict[str, Any], list[float]]:
    env, conn, client, sizes = bench.env, bench.conn, bench.redis, bench.sizes
    run_ids = seed.make_run_ids(sizes.latency_runs, "latency")
    rate = sizes.latency_rate * (LIGHT_SHARE if mode == KICK_LIGHT else 1.0)
    total = int(rate * sizes.latency_seconds)
    strands = PRODUCER_PROCESSES * THREADS_PER_PRODUCER
    ctx = mp.get_context("spawn")
    ready: mp.Queue[int] = ctx.Queue()
    producer_results: mp.Queue[ProducerReport] = ctx.Queue()
    consumer_results: mp.Queue[ConsumerReport] = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    received = ctx.Value("q", 0)
    procs: list[Any] = []
    worker = project.start_worker(env, bench.workdir, bench.workers, tag=f"latency-{mode}")
    beat: project.CeleryProcess | None = None
    try:
        project.warm_up(conn, client, env, worker, bench.workers)
        beat = project.start_beat(env, bench.workdir, project.DISPATCH_INTERVAL, tag=mode)
        seed.reset(conn, client, env)
        seed.seed_runs(conn, run_ids, 0)
        seed.settle(conn)
        keys = [env.stream_key(rid) for rid in run_ids]
        for index in range(CONSUMER_PROCESSES):
            share = keys[index::CONSUMER_PROCESSES]
            procs.append(
                ctx.Process(
                    target=consumer_main,
                    args=(env.redis_url, share, ready, stop, received, consumer_results),
                    daemon=True,
                )
            )
        for index in range(PRODUCER_PROCESSES):
            spec = ProducerSpec(index, run_ids, rate, total, strands, kick=mode != BEAT)
            procs.append(
                ctx.Process(
                    target=producer_main,
                    args=(spec, ready, start_at, go, producer_results),
                    daemon=True,
                )
            )
        for proc in procs:
            proc.start()
        _wait_ready(ready, len(procs), procs, worker, beat)
        # The warm-up events must be out of the way before the clock starts.
        measure.wait_published(conn, timeout=60, tick=lambda _e: _alive(worker, beat))
        logger.info("latency %s: producing %d events at %.0f/s", mode, total, rate)
        start_at.value = time.monotonic() + 0.2
        split = measure.CpuSplit(conn, bench.redis_pid, [*measure.tree(worker.pid), beat.pid])
        go.set()
        reports = _collect_producers(producer_results, worker, beat, sizes.latency_seconds)
        produced_in = time.monotonic() - start_at.value
        idle, cpu = split.stop()
        produced = sum(r.produced for r in reports)
        deadline = time.monotonic() + 60
        while received.value < produced and time.monotonic() < deadline:
            _alive(worker, beat)
            time.sleep(0.05)
        stop.set()
        consumers = [consumer_results.get(timeout=60) for _ in range(CONSUMER_PROCESSES)]
        for consumer in consumers:
            if consumer.error is not None:
                raise measure.BenchError(f"latency consumer failed:\n{consumer.error}")
        consumed = [latency for consumer in consumers for latency in consumer.latencies]
        consumer_cpu = sum(consumer.cpu_seconds for consumer in consumers)
        if len(consumed) != produced:
            raise measure.BenchError(
                f"latency {mode}: {produced} events committed, {len(consumed)} reached streams"
            )
        verify.verify(conn, client, env, complete=True, full=True, check_payloads=False)
    finally:
        stop.set()
        go.set()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        if beat is not None:
            beat.stop()
        worker.stop()
        seed.reset(conn, client, env)
    consumed.sort()
    commit_times = sorted(t for r in reports for t in r.append_commit)
    producers_cpu = sum(r.cpu_seconds for r in reports)
    result = {
        "events": produced,
        "skipped_events": total - produced,  # due after the window closed: producers fell behind
        "target_rate": rate,
        "achieved_rate": round(produced / produced_in, 1),
        "p50_ms": round(1000 * measure.percentile(consumed, 50), 1),
        "p99_ms": round(1000 * measure.percentile(consumed, 99), 1),
        "max_ms": round(1000 * consumed[-1], 1),
        "mean_ms": round(1000 * statistics.fmean(consumed), 1),
        "producer_append_commit_p50_ms": round(1000 * measure.percentile(commit_times, 50), 2),
        "producer_late_events": sum(r.late for r in reports),
        "producer_max_lag_ms": round(1000 * max(r.max_lag for r in reports), 1),
        "cpu_idle_pct": round(idle, 1),
        # Cores busy, on average over the production window, by role.
        "cores_producers": round(producers_cpu / produced_in, 2),
        "cores_workers": round(cpu["client"] / produced_in, 2),  # worker pool + beat
        "cores_postgres": round(cpu["postgres"] / produced_in, 2),
        "cores_redis": round(cpu["redis"] / produced_in, 2),
        "cores_consumer": round(consumer_cpu / produced_in, 2),
        "cores_other": round(
            max(cpu["other"] - producers_cpu - consumer_cpu, 0.0) / produced_in, 2
        ),
        "cores_machine": round((100 - idle) / 100 * (os.cpu_count() or 1), 2),
        "consumer_reads_per_s": round(sum(c.reads for c in consumers) / produced_in, 1),
        "percentiles_ms": [round(1000 * measure.percentile(consumed, q), 2) for q in range(101)],
    }
    logger.info(
        "latency %s: %d of %d events, p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d events late; "
        "cores busy: producers %.2f, workers %.2f, postgres %.2f, redis %.2f, consumer %.2f, "
        "machine %.2f of %d",
        mode,
        produced,
        total,
        result["p50_ms"],
        result["p99_ms"],
        result["max_ms"],
        result["producer_late_events"],
        result["cores_producers"],
        result["cores_workers"],
        result["cores_postgres"],
        result["cores_redis"],
        result["cores_consumer"],
        result["cores_machine"],
        os.cpu_count() or 1,
    )
    return result, consumed


def _alive(worker: project.CeleryProcess, beat: project.CeleryProcess | None) -> None:
    worker.check()
    if beat is not None:
        beat.check()


def _wait_ready(
    ready: mp.Queue[int],
    count: int,
    procs: list[Any],
    worker: project.CeleryProcess,
    beat: project.CeleryProcess | None,
) -> None:
    deadline = time.monotonic() + 120
    seen = 0
    while seen < count:
        try:
            ready.get(timeout=0.5)
            seen += 1
        except queue.Empty:
            _alive(worker, beat)
            for proc in procs:
                if proc.exitcode is not None:
                    raise measure.BenchError(
                        f"latency process exited with {proc.exitcode}"
                    ) from None
            if time.monotonic() > deadline:
                raise measure.BenchError("latency producers/consumer did not start") from None


def _collect_producers(
    results: mp.Queue[ProducerReport],
    worker: project.CeleryProcess,
    beat: project.CeleryProcess | None,
    seconds: float,
) -> list[ProducerReport]:
    reports: list[ProducerReport] = []
    deadline = time.monotonic() + seconds + 120
    while len(reports) < PRODUCER_PROCESSES:
        try:
            report = results.get(timeout=0.5)
        except queue.Empty:
            _alive(worker, beat)
            if time.monotonic() > deadline:
                raise measure.BenchError("latency producers did not finish") from None
            continue
        if report.error is not None:
            raise measure.BenchError(f"latency producer failed:\n{report.error}")
        reports.append(report)
    return reports
