"""A producer process for the fault scenarios: appends events to given runs for a while.

Run as ``python -m tests.faults.producer PLAN`` with the outbox's environment (the scenario's
database as its owner, the sink, the broker and queue for kicks). PLAN is a JSON file:
``{"runs": [ids], "events": N, "seconds": S, "threads": T, "kick_every": K, "seed": X}``.
Each of T threads commits transactions of 1 to 4 events to a random run through
``models.append_event``, every K-th transaction with ``kick=True``, paced so the N events
take about S seconds. A run that is gone (a scenario deletes runs) is dropped from the pool.
On exit it prints one JSON line: what it committed and what went wrong.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from models import UnknownRun, append_event, session_factory
from tasks import app  # noqa: F401 - registers the kicker, as a producing application does

MAX_EVENTS_PER_TRANSACTION = 4


class Producer:
    """Shared state of the producing threads: the pool of runs, the pace and the counts."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.runs = [uuid.UUID(r) for r in plan["runs"]]
        self.target = int(plan["events"])
        self.seconds = float(plan["seconds"])
        self.kick_every = int(plan["kick_every"])
        self.random = random.Random(int(plan["seed"]))
        self.lock = threading.Lock()
        self.claimed = 0  # events threads took on (committed or being committed)
        self.committed = 0
        self.transactions = 0
        self.kicked = 0
        self.gone: set[uuid.UUID] = set()  # runs deleted under the producer
        self.errors: list[str] = []
        self.started = time.monotonic()
        self.session = session_factory()

    def claim(self) -> tuple[uuid.UUID, int, bool] | None:
        """The next transaction's run, event count and kick; None when all are claimed."""
        with self.lock:
            left = self.target - self.claimed
            pool = [r for r in self.runs if r not in self.gone]
            if left <= 0 or not pool:
                return None
            count = min(left, self.random.randint(1, MAX_EVENTS_PER_TRANSACTION))
            self.claimed += count
            self.transactions += 1
            kick = self.kick_every > 0 and self.transactions % self.kick_every == 0
            due = self.started + self.seconds * self.claimed / self.target
            run_id = self.random.choice(pool)
        time.sleep(max(0.0, due - time.monotonic()))  # the pace: not ahead of the plan
        return run_id, count, kick

    def commit(self, run_id: uuid.UUID, count: int, kick: bool) -> None:
        """Append ``count`` events to the run in one transaction."""
        try:
            with self.session() as session, session.begin():
                for n in range(count):
                    append_event(session, run_id, "fault.test", {"n": n, "pad": "x" * n}, kick=kick)
        except UnknownRun:
            with self.lock:
                self.gone.add(run_id)
                self.claimed -= count  # give the events to another run
            return
        except Exception as exc:  # noqa: BLE001 - reported to the scenario, which fails on it
            with self.lock:
                self.claimed -= count
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            time.sleep(0.1)
            return
        with self.lock:
            self.committed += count
            self.kicked += kick

    def work(self) -> None:
        """One thread's loop."""
        while (claim := self.claim()) is not None:
            self.commit(*claim)
            if len(self.errors) > 100:
                return  # something is badly wrong: stop, and say so

    def report(self) -> dict[str, Any]:
        """What the producer did, for the scenario."""
        return {
            "committed": self.committed,
            "transactions": self.transactions,
            "kicked": self.kicked,
            "gone": len(self.gone),
            "errors": self.errors[:10],
            "error_count": len(self.errors),
            "seconds": round(time.monotonic() - self.started, 2),
        }


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    producer = Producer(plan)
    threads = [threading.Thread(target=producer.work) for _ in range(int(plan["threads"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(producer.report()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
