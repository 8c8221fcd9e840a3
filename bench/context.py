"""What every workload needs: the sizes to run, and the bench's servers and options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import redis

from bench import env as bench_env


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``FULL`` is the issue's, ``QUICK`` a smoke test for CI."""

    deep_runs: int
    deep_events: int  # per run
    wide_runs: int
    wide_events: int  # per run
    latency_runs: int
    latency_rate: float  # events per second, all producers together
    latency_seconds: float
    history_runs: int  # the runs holding the pending events
    history_events: int  # pending events per run
    history_published: int  # published events added for the "with history" half
    history_reps: int
    memory_runs: int
    memory_events: int  # in total
    memory_baseline: int  # RSS is compared with its value after this many events
    per_row_seconds: float | None  # time budget of one per-row repetition; None: run it out
    verify_full: bool  # read every entry back (else XLEN and the first and last ids)


FULL = Sizes(
    deep_runs=100,
    deep_events=2_000,
    wide_runs=20_000,
    wide_events=10,
    latency_runs=500,
    latency_rate=1_000,
    latency_seconds=60,
    history_runs=10,
    history_events=100,
    history_published=2_000_000,
    history_reps=9,
    memory_runs=100,
    memory_events=1_000_000,
    memory_baseline=10_000,
    per_row_seconds=20,
    verify_full=True,
)

QUICK = Sizes(
    deep_runs=10,
    deep_events=500,
    wide_runs=500,
    wide_events=10,
    latency_runs=100,
    latency_rate=200,
    latency_seconds=5,
    history_runs=10,
    history_events=100,
    history_published=20_000,
    history_reps=5,
    memory_runs=10,
    memory_events=20_000,
    memory_baseline=10_000,
    per_row_seconds=None,
    verify_full=True,
)


@dataclasses.dataclass(frozen=True)
class Bench:
    """The bench's servers, connections and options, shared by the workloads."""

    env: bench_env.BenchEnv
    conn: psycopg.Connection  # autocommit, to the bench database
    redis: redis.Redis
    sizes: Sizes
    reps: int
    workers: int
    workdir: Path
    redis_pid: int  # the Redis server's, for its CPU time (same machine: 127.0.0.1 only)
