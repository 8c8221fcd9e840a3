"""Workers killed with `kill -9`, and more workers and beats than a deployment should run."""

from __future__ import annotations

import contextlib
import os
import random
import signal

import pytest

from tests.faults.harness import Scenario, pool_children
from tests.faults.plans import plan
from tests.faults.report import Figures
from tests.workers import BROKERS, is_amqp


def test_workers_killed_with_kill_9_parents_and_pool_children_lose_and_duplicate_nothing(
    scenario: Scenario, fault_size: str, record_figures: list[Figures]
) -> None:
    size = plan("kill", fault_size)
    runs = scenario.create_runs(size.runs)
    scenario.start_sink()
    with scenario.together():
        workers = [scenario.start_worker(), scenario.start_worker()]
        scenario.start_beat()
    scenario.start_producer(runs, size.events, size.seconds)
    chooser = random.Random(7)
    kills = {"parent": 0, "pool child": 0}

    def kill(index: int) -> None:
        slot = index % len(workers)
        victim = workers[slot]
        with scenario.fault():
            children = pool_children(victim)
            if index % 3 == 0 or not children:  # the main process: a supervisor restarts it
                victim.signal(signal.SIGKILL)
                victim.stop()  # what is left of its group, as systemd's KillMode=mixed does
                workers[slot] = scenario.start_worker()
                kills["parent"] += 1
            else:  # a pool process: the worker starts another one by itself
                victim_pid = chooser.choice(children)
                signal_pid(victim_pid)
                kills["pool child"] += 1

    scenario.every(size.seconds / size.faults, size.faults, kill)

    faults = f"{kills['parent']} kill -9 of a worker, {kills['pool child']} of a pool process"
    scenario.conclude(
        "worker kill -9",
        size.label("2 workers x 2 processes"),
        faults,
        size.settle_limit,
        record_figures,
    )


def signal_pid(pid: int) -> None:
    """``kill -9`` one pool process (it may have just ended by itself: then nothing)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("broker_url", BROKERS, indirect=True)
def test_four_workers_and_two_beats_on_one_database_publish_everything_once_in_order(
    scenario: Scenario, fault_size: str, record_figures: list[Figures], broker_url: str
) -> None:
    size = plan("crowd", fault_size)
    runs = scenario.create_runs(size.runs)
    scenario.start_sink()
    with scenario.together():
        for _ in range(4):
            scenario.start_worker(concurrency=1)
    with scenario.fault():  # the fault: a second beat, dispatching the same runs
        scenario.start_beat()
        scenario.start_beat()
        producer = scenario.start_producer(runs, size.events, size.seconds)
        scenario.finish_producers()
    assert not producer.running()

    broker = "RabbitMQ" if is_amqp(broker_url) else "Redis"
    scenario.conclude(
        f"4 workers, 2 beats ({broker})",
        size.label(f"{broker} broker"),
        "4 workers x 1 process and 2 beats racing",
        size.settle_limit,
        record_figures,
    )
