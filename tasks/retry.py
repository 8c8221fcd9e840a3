"""When to try again: the delays of refused runs and of the sink's outage checks. Pure logic."""

from __future__ import annotations

import random
from collections.abc import Callable

# A refused run waits a random time between 0 and 1, 2, 4, ... seconds, capped here.
REFUSAL_MAX_DELAY = 60.0
# During a sink outage dispatch checks again after 1, 2, 4, 8 seconds, then every 15 (the
# default of OUTBOX_OUTAGE_CHECK_MAX).
OUTAGE_MAX_DELAY = 15.0


def refusal_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before a run refused for the ``attempt``-th time (1, 2, ...) is drained again.

    Exponential with full jitter, so runs refused together do not come back together.
    """
    return rand() * min(REFUSAL_MAX_DELAY, 2.0 ** (max(attempt, 1) - 1))


def outage_delay(probes: int, longest: float = OUTAGE_MAX_DELAY) -> float:
    """Seconds before the next check of a sink found unavailable ``probes`` times since it went,
    at most ``longest``.

    No jitter: one dispatcher at a time checks (see tasks.outages).
    """
    return min(longest, 2.0 ** max(probes, 0))
