"""The sink's faults: Redis killed and restarted (with and without persistence), a slow,
stalled or dropping network between the workers and Redis, and Redis out of memory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from tasks.testing import processes
from tests.faults.harness import Scenario, kill_redis
from tests.faults.plans import plan
from tests.faults.report import Figures
from tests.helpers import wait_until

OUTBOX = str(Path(sys.executable).with_name("outbox"))
DOWNTIME = 2.0  # seconds the sink stays down at each restart
# Each run's events published before a moment: what a restart at that moment took with it.
PUBLISHED_BEFORE = text(
    "SELECT run_id, max(seq) AS last FROM run_events"
    " WHERE published_at < CAST(:moment AS timestamptz) GROUP BY run_id"
)


def test_a_sink_killed_and_restarted_with_aof_loses_nothing(
    scenario: Scenario, fault_size: str, record_figures: list[Figures]
) -> None:
    size = plan("sink restart", fault_size)
    runs = scenario.create_runs(size.runs)
    server = scenario.start_sink("--appendonly", "yes", "--appendfsync", "always")
    with scenario.together():
        scenario.start_worker()
        scenario.start_worker()
        scenario.start_beat()
    scenario.start_producer(runs, size.events, size.seconds)

    def restart(_: int) -> None:
        with scenario.fault():
            kill_redis(server)
            scenario.hold(DOWNTIME)
            server.start()

    scenario.every(size.seconds / size.faults, size.faults, restart)

    scenario.conclude(
        "sink restart, AOF",
        size.label("appendfsync always"),
        f"{size.faults} kill -9 of the sink's Redis, each down {DOWNTIME:g}s",
        size.settle_limit,
        record_figures,
    )


def test_a_sink_restarted_without_persistence_loses_what_verify_reports_and_replay_restores(
    scenario: Scenario, fault_size: str, record_figures: list[Figures]
) -> None:
    size = plan("sink restart", fault_size)
    runs = scenario.create_runs(size.runs)
    server = scenario.start_sink()  # --save "" --appendonly no: a restart loses everything
    with scenario.together():
        scenario.start_worker()
        scenario.start_worker()
        scenario.start_beat()
    scenario.start_producer(runs, size.events, size.seconds)
    stops: list[str] = []

    def restart(_: int) -> None:
        with scenario.fault():
            kill_redis(server)
            stopped = scenario.database_now()
            # A drain that began before the kill could still publish, if Redis came back
            # before its attempt failed: let every such transaction end first.
            wait_until(
                lambda: scenario.worker_transactions_before(stopped) == 0,
                30,
                "the workers' transactions from before the kill to end",
            )
            stops.append(stopped)
            scenario.hold(DOWNTIME)
            server.start()

    scenario.every(size.seconds / size.faults, size.faults, restart)
    lost: dict[str, int] = {}

    def verify_then_replay() -> None:
        # Every event published before the last restart was in Redis, and is gone.
        with scenario.Session() as session:
            rows = session.execute(PUBLISHED_BEFORE, {"moment": stops[-1]}).all()
        expected = {row.run_id: "1" if row.last == 1 else f"1-{row.last}" for row in rows}
        findings = scenario.check()
        assert findings.lost_by_run() == expected
        lost["entries"] = findings.lost
        replay = operator(scenario, "replay", "--all-lost", "--rebuild")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert f"{len(expected)} stream" in replay.stdout.splitlines()[-1], replay.stdout

    scenario.conclude(
        "sink restart, no persistence",
        size.label("no persistence"),
        lambda: (
            f"{size.faults} kill -9 of the sink's Redis, each down {DOWNTIME:g}s; "
            f"{lost['entries']:,} entries lost, as verify reported, and rebuilt by replay"
        ),
        size.settle_limit,
        record_figures,
        before_check=verify_then_replay,
    )
    assert lost["entries"] > 0  # the restarts did take published entries with them


def operator(scenario: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``outbox ARGS`` as an operator would, with the workers' role and sink."""
    return subprocess.run(
        [OUTBOX, *args],
        cwd=processes.PROJECT_ROOT,
        env=scenario.celery.env | scenario.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# Settings for the proxied sink: a stalled call ends after 1 s, a task after 10 s at most.
PROXIED = {
    "OUTBOX_REDIS_TIMEOUT": "1",
    "CELERY_TASK_SOFT_TIME_LIMIT": "10",
    "CELERY_TASK_TIME_LIMIT": "20",
}
PROXY_FAULTS = (("delay", 0.2), ("stall", 0.0), ("drop", 0.0))
# Seconds each of the proxy's faults lasts: a stall longer than a call's timeout and its one
# retry (2 x 1 s), so that it is an outage, not a slow call.
FAULT_LENGTH = 3.0
TASK_TIME = re.compile(r"Task (outbox\.[a-z_]+)\[[^\]]+\] succeeded in ([0-9.]+)s")


def test_a_slow_stalled_or_dropping_sink_keeps_time_limits_and_releases_every_lock(
    scenario: Scenario, fault_size: str, record_figures: list[Figures]
) -> None:
    size = plan("proxy", fault_size)
    runs = scenario.create_runs(size.runs)
    proxy = scenario.start_proxy(scenario.start_sink())
    with scenario.together():
        scenario.start_worker(extra=PROXIED)
        scenario.start_worker(extra=PROXIED)
        scenario.start_beat(extra=PROXIED)
    scenario.start_producer(runs, size.events, size.seconds)
    done = {mode: 0 for mode, _ in PROXY_FAULTS}

    def misbehave(index: int) -> None:
        mode, delay = PROXY_FAULTS[index % len(PROXY_FAULTS)]
        with scenario.fault():
            proxy.set_mode(mode, delay)
            scenario.hold(FAULT_LENGTH)
            proxy.set_mode("pass")
        done[mode] += 1

    scenario.every(size.seconds / size.faults, size.faults, misbehave)

    scenario.conclude(
        "slow or black-holed sink",
        size.label("via a TCP proxy"),
        f"{done['delay']} x 0.2 s delay per chunk, {done['stall']} stalls, "
        f"{done['drop']} drops of every connection, {FAULT_LENGTH:g}s each",
        size.settle_limit,
        record_figures,
    )
    # No task ran into its time limits (they would be errors above), and none came near.
    times = [float(seconds) for _, seconds in TASK_TIME.findall(scenario.celery.logs())]
    assert times, "no task finished"
    assert max(times) < float(PROXIED["CELERY_TASK_SOFT_TIME_LIMIT"]), max(times)
    assert proxy.accepted > 0


def test_a_sink_out_of_memory_parks_no_run_and_everything_is_published_after_it(
    scenario: Scenario, fault_size: str, record_figures: list[Figures]
) -> None:
    size = plan("oom", fault_size)
    runs = scenario.create_runs(size.runs)
    server = scenario.start_sink()
    admin = server.client()
    admin.config_set("maxmemory-policy", "noeviction")
    with scenario.together():
        scenario.start_worker()
        scenario.start_worker()
        scenario.start_beat()
    scenario.start_producer(runs, size.events, size.seconds)
    refused = re.compile(r"OutOfMemoryError|\bOOM\b")

    def starve(_: int) -> None:
        with scenario.fault():
            admin.config_set("maxmemory", "1")
            scenario.hold(DOWNTIME)
            admin.config_set("maxmemory", "0")

    scenario.every(size.seconds / size.faults, size.faults, starve)

    scenario.conclude(
        "sink out of memory",
        size.label("maxmemory 1 byte, noeviction"),
        f"{size.faults} x {DOWNTIME:g}s out of memory",
        size.settle_limit,
        record_figures,
    )
    assert refused.search(scenario.celery.logs()), "no drain met the OOM"
    admin.close()
