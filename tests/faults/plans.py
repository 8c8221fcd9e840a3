"""How large each fault scenario is, at the bounded size (every run) and the large one."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Plan:
    """A scenario's size: runs, events the producer commits over ``seconds``, faults."""

    runs: int
    events: int
    seconds: float  # how long the producer takes to commit them
    faults: int
    settle_limit: float  # seconds after the last fault before the scenario fails

    def label(self, *more: str) -> str:
        """The size column of the reliability table."""
        return ", ".join([f"{self.events:,} events", f"{self.runs:,} runs", *more])


BOUNDED_SETTLE = 60.0  # the limit at the bounded size
LARGE_SETTLE = 180.0

PLANS: dict[str, dict[str, Plan]] = {
    "kill": {
        "bounded": Plan(runs=20, events=400, seconds=5, faults=3, settle_limit=BOUNDED_SETTLE),
        "large": Plan(runs=200, events=20_000, seconds=110, faults=24, settle_limit=LARGE_SETTLE),
    },
    "sink restart": {
        "bounded": Plan(runs=20, events=450, seconds=6, faults=2, settle_limit=BOUNDED_SETTLE),
        "large": Plan(runs=100, events=8_000, seconds=60, faults=6, settle_limit=LARGE_SETTLE),
    },
    "database": {
        "bounded": Plan(runs=20, events=300, seconds=4, faults=4, settle_limit=BOUNDED_SETTLE),
        "large": Plan(runs=100, events=8_000, seconds=60, faults=20, settle_limit=LARGE_SETTLE),
    },
    "crowd": {
        "bounded": Plan(runs=20, events=300, seconds=4, faults=1, settle_limit=BOUNDED_SETTLE),
        "large": Plan(runs=100, events=8_000, seconds=60, faults=1, settle_limit=LARGE_SETTLE),
    },
    "deletes": {
        "bounded": Plan(runs=24, events=300, seconds=4, faults=6, settle_limit=BOUNDED_SETTLE),
        "large": Plan(runs=100, events=8_000, seconds=60, faults=30, settle_limit=LARGE_SETTLE),
    },
    "proxy": {
        "bounded": Plan(runs=20, events=450, seconds=9, faults=3, settle_limit=BOUNDED_SETTLE),
        "large": Plan(runs=100, events=8_000, seconds=72, faults=12, settle_limit=LARGE_SETTLE),
    },
    "oom": {
        "bounded": Plan(runs=20, events=450, seconds=6, faults=2, settle_limit=BOUNDED_SETTLE),
        "large": Plan(runs=100, events=8_000, seconds=60, faults=6, settle_limit=LARGE_SETTLE),
    },
}


def plan(scenario: str, size: str) -> Plan:
    """The plan of ``scenario`` at ``size``."""
    return PLANS[scenario][size]
