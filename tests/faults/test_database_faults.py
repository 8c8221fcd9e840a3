"""The database's faults: the workers' connections killed, and runs deleted (and their ids
used again) while they drain."""

from __future__ import annotations

import random
import uuid

from sqlalchemy import text

from models import append_event, create_run
from tests.faults.checker import published_events
from tests.faults.harness import Scenario
from tests.faults.plans import plan
from tests.faults.report import Figures
from tests.helpers import wait_until

DELETE_RUN = text("DELETE FROM runs WHERE id = :id")


def test_the_workers_database_connections_killed_again_and_again_lose_nothing(
    scenario: Scenario, fault_size: str, record_figures: list[Figures]
) -> None:
    size = plan("database", fault_size)
    runs = scenario.create_runs(size.runs)
    scenario.start_sink()
    with scenario.together():
        scenario.start_worker()
        scenario.start_worker()
        scenario.start_beat()
    scenario.start_producer(runs, size.events, size.seconds)
    terminated: list[int] = []

    def terminate(_: int) -> None:
        with scenario.fault():
            terminated.append(scenario.terminate_worker_connections())

    scenario.every(size.seconds / size.faults, size.faults, terminate)

    assert sum(terminated) > 0, "no worker connection was there to terminate"
    scenario.conclude(
        "database connections killed",
        size.label("2 workers x 2 processes"),
        f"{size.faults} rounds of pg_terminate_backend: {sum(terminated)} worker connections",
        size.settle_limit,
        record_figures,
    )


def test_runs_deleted_while_they_drain_end_cleanly_and_reused_ids_end_parked_unpublished(
    scenario: Scenario, fault_size: str, record_figures: list[Figures]
) -> None:
    size = plan("deletes", fault_size)
    runs = scenario.create_runs(size.runs)
    scenario.start_sink()
    with scenario.together():
        scenario.start_worker()
        scenario.start_worker()
        scenario.start_beat()
    scenario.start_producer(runs, size.events, size.seconds)
    chooser = random.Random(11)
    left = list(runs)
    deleted: list[uuid.UUID] = []

    def delete(index: int) -> None:
        # Every other victim is created again with its id: one whose old stream holds an
        # entry at 1-0, which the new run's first event will meet.
        reuse = index % 2 == 0
        if reuse:
            wait_until(
                lambda: any(has_first_entry(scenario, r) for r in left), 30, "a run's first entry"
            )
            run_id = chooser.choice([r for r in left if has_first_entry(scenario, r)])
        else:
            run_id = chooser.choice(left)
        left.remove(run_id)
        with scenario.fault():
            with scenario.Session() as session, session.begin():
                session.execute(DELETE_RUN, {"id": run_id})
            deleted.append(run_id)
            if reuse:
                with scenario.Session() as session, session.begin():
                    create_run(session, run_id)
                    for n in range(3):
                        append_event(session, run_id, "fault.reused", {"n": n})
                scenario.reused.add(run_id)

    scenario.every(size.seconds / size.faults, size.faults, delete)

    assert len(scenario.reused) == (size.faults + 1) // 2
    findings = scenario.conclude(
        "runs deleted, ids reused",
        size.label("2 workers x 2 processes"),
        lambda: (
            f"{len(deleted)} runs deleted while draining; {len(scenario.reused)} of them "
            f"created again with their ids, parked with a CONFLICT, their "
            f"{published_events(scenario.Session, scenario.reused)[0]} new events unpublished"
        ),
        size.settle_limit,
        record_figures,
    )
    for run_id in scenario.reused:
        assert findings.parked[run_id].startswith("CONFLICT entry 1-0 holds another event")
        report = findings.reports[run_id]
        assert (report.next_seq, report.matched, report.missing.count) == (1, 0, 0)
    events, published = published_events(scenario.Session, scenario.reused)
    assert events >= 3 * len(scenario.reused)
    assert published == 0  # the new events never vanish into the old stream


def has_first_entry(scenario: Scenario, run_id: uuid.UUID) -> bool:
    """True if the run's stream holds an entry at 1-0."""
    assert scenario.sink is not None
    return bool(scenario.sink.xrange(f"{scenario.prefix}{run_id}", "1-0", "1-0"))
