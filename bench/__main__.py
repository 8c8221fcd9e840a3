"""``python -m bench``: run the workloads, print the table, write JSON and charts.

Exit status: 0 when every implementation delivered exactly what it should (whether or not
the targets were met), 1 when one crashed or produced wrong stream contents, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from bench import env as bench_env

logger = logging.getLogger("bench")

WORKLOADS = ("deep", "wide", "latency", "history", "memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the outbox publisher against an ideal and a per-row relay.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (CI)")
    parser.add_argument(
        "--only", nargs="+", choices=WORKLOADS, metavar="WORKLOAD", help=f"any of {WORKLOADS}"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker pool processes, and relay processes (default 2)",
    )
    parser.add_argument(
        "--per-row-seconds",
        type=float,
        help="time budget of one per-row repetition (default: 20 full, none with --quick)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="latency workload: events/s over all producers (default 1000; --quick 200)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        help="latency workload: seconds per mode (default 60; --quick 5)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="directory for results"
    )
    parser.add_argument(
        "--admin-url",
        default=bench_env.DEFAULT_ADMIN_URL,
        help="PostgreSQL URL of a role that may CREATE DATABASE",
    )
    parser.add_argument("--redis-url", default=bench_env.DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    if args.reps < 1 or args.workers < 1:
        parser.error("--reps and --workers must be at least 1")
    if (args.latency_rate is not None and args.latency_rate <= 0) or (
        args.latency_seconds is not None and args.latency_seconds <= 0
    ):
        parser.error("--latency-rate and --latency-seconds must be positive")
    return args


class _Elapsed(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("[%(elapsed)7.1fs] %(message)s")
        self.start = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        record.elapsed = time.monotonic() - self.start
        return super().format(record)


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    # SIGTERM becomes an exception, so the finally blocks stop workers and drop the database.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the exit status."""
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Elapsed())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # The project's per-batch INFO lines: workers log at WARNING, so the in-process drain does too.
    logging.getLogger("tasks").setLevel(logging.WARNING)
    logging.getLogger("celery").setLevel(logging.WARNING)  # task loggers hang off celery.task
    logging.getLogger("alembic").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate)

    env = bench_env.new_env(args.admin_url, args.redis_url)
    # Before anything imports the project's Celery app: celeryconfig reads the environment.
    bench_env.export(env)
    from bench import context, history, latency, measure, memory, report, throughput
    from tasks.testing.processes import ProcessExited

    sizes = context.QUICK if args.quick else context.FULL
    if args.per_row_seconds is not None:
        sizes = dataclasses.replace(sizes, per_row_seconds=args.per_row_seconds or None)
    if args.latency_rate is not None:
        sizes = dataclasses.replace(sizes, latency_rate=args.latency_rate)
    if args.latency_seconds is not None:
        sizes = dataclasses.replace(sizes, latency_seconds=args.latency_seconds)
    selected = args.only or list(WORKLOADS)
    results: dict[str, Any] = {"meta": _meta(args, sizes)}
    samples: dict[str, list[float]] = {}
    started = time.monotonic()
    status = 0
    logger.info(
        "bench %s: database %s, Redis prefix %s, workloads %s",
        "quick" if args.quick else "full",
        env.database,
        env.key_prefix,
        " ".join(selected),
    )
    try:
        with (
            tempfile.TemporaryDirectory(prefix="outbox-bench-") as workdir,
            bench_env.provisioned(env) as client,
            psycopg.connect(env.conninfo, autocommit=True) as conn,
        ):
            redis_pid = int(client.info("server")["process_id"])
            bench = context.Bench(
                env, conn, client, sizes, args.reps, args.workers, Path(workdir), redis_pid
            )
            for workload in selected:
                began = time.monotonic()
                logger.info("== %s", workload)
                if workload == "deep":
                    results[workload] = throughput.run(
                        bench, workload, sizes.deep_runs, sizes.deep_events
                    )
                elif workload == "wide":
                    results[workload] = throughput.run(
                        bench, workload, sizes.wide_runs, sizes.wide_events
                    )
                elif workload == "latency":
                    results[workload] = latency.run(bench)
                    samples = results[workload].pop("samples")
                elif workload == "history":
                    results[workload] = history.run(bench)
                elif workload == "memory":
                    results[workload] = memory.run(bench)
                results[workload]["wall_seconds"] = round(time.monotonic() - began, 1)
    except KeyboardInterrupt:
        logger.error("interrupted; the bench's database and keys were removed")
        results["meta"]["incomplete"] = "interrupted"
        status = 130
    except (measure.BenchError, ProcessExited) as exc:  # a worker or beat that died is a failure
        logger.error("FAILED: %s", exc)
        results["meta"]["incomplete"] = f"failed: {exc}"
        status = 1
    if not any(workload in results for workload in WORKLOADS):
        return status
    # Whatever completed is reported, also after a failure or an interruption.
    results["meta"]["wall_seconds"] = round(time.monotonic() - started, 1)
    judged = report.targets(results)
    results["targets"] = judged
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "results.json", results)
    charts = report.write_charts(args.out, results, samples)
    print(report.table(results, judged))
    print()
    print(report.notes(results, throughput.describe(args.workers)))
    logger.info(
        "wrote %s in %.0fs",
        ", ".join(str(p) for p in [args.out / "results.json", *charts]),
        time.monotonic() - started,
    )
    return status


def _meta(args: argparse.Namespace, sizes: Any) -> dict[str, Any]:
    from tasks.settings import Settings

    settings = Settings.from_env()
    return {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *(sys.argv[1:])]),
        "mode": "quick" if args.quick else "full",
        "reps": args.reps,
        "workers": args.workers,
        "sizes": dataclasses.asdict(sizes),
        "git": _git(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
        },
        "settings": {
            k: v
            for k, v in dataclasses.asdict(settings).items()
            if k not in ("database_url", "redis_url")
        },
    }


def _git() -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip()


def _cpu_model() -> str:
    # A label for the results, not a measurement: psutil reports no CPU model name, and
    # platform.processor() is often just the architecture on Linux.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
