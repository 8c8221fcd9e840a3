"""The sink's outages, seen once by the whole deployment: one shared record, few log lines.

When a worker finds the sink unavailable it records the outage (``failed``); only the
process that finds it up logs that the outage began. While it lasts, dispatch does nothing
but, at growing intervals, check again (``before_dispatch``): the one dispatcher whose check
is due goes ahead, and the others skip their tick quietly. A check that fails logs one line;
the first that succeeds ends the outage and logs how long it lasted. Drains that meet the
outage meanwhile note it on their runs and end: dispatch queues them again once the sink is
back, so nothing is counted against the runs and nothing floods the log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Protocol

from tasks import retry
from tasks.store import SinkHealth

logger = logging.getLogger(__name__)


class HealthRecord(Protocol):
    """Where the sink's health is kept (``tasks.pg.SqlStore``)."""

    def sink_health(self) -> SinkHealth: ...
    def sink_down(self, error: str, first_check_in: float) -> bool: ...
    def claim_probe(self, probes: int, next_check_in: float) -> bool: ...
    def sink_still_down(self, error: str) -> None: ...
    def sink_up(self) -> float | None: ...


@dataclasses.dataclass(frozen=True)
class Tick:
    """What dispatch may do on this tick."""

    go: bool  # False: the sink is down and this tick is not the one to check it
    check: int = 0  # > 0: this tick is the outage's check number ``check``
    next_in: float = 0.0  # seconds to the next check, should this one fail
    down_since: str | None = None


class SinkGate:
    """Decides when dispatch checks a sink that is down, and logs the outage's few lines."""

    def __init__(
        self,
        record: HealthRecord,
        log: logging.Logger = logger,
        longest_check: float = retry.OUTAGE_MAX_DELAY,
    ) -> None:
        self.record = record
        self.log = log
        self.longest_check = longest_check  # OUTBOX_OUTAGE_CHECK_MAX

    def before_dispatch(self) -> Tick:
        """Read the record: go ahead normally, go ahead as the outage's check, or skip."""
        health = self.record.sink_health()
        if health.down_since is None:
            return Tick(go=True)
        since = health.down_since.isoformat(timespec="seconds")
        next_in = retry.outage_delay(health.probes + 1, self.longest_check)
        if health.probe_due and self.record.claim_probe(health.probes, next_in):
            return Tick(go=True, check=health.probes + 1, next_in=next_in, down_since=since)
        return Tick(go=False, down_since=since)

    def failed(self, error: str, tick: Tick | None = None) -> None:
        """The sink was unavailable to a drain, or to dispatch on ``tick``."""
        first_check_in = retry.outage_delay(0, self.longest_check)
        if self.record.sink_down(error, first_check_in):
            self.log.warning(
                "sink unavailable, drains wait for it (dispatch checks again in %gs): %s",
                first_check_in,
                error,
            )
        elif tick is not None and tick.check:
            self.record.sink_still_down(error)
            self.log.warning(
                "sink still unavailable since %s (check %d; next in %gs): %s",
                tick.down_since,
                tick.check,
                tick.next_in,
                error,
            )

    def succeeded(self, tick: Tick) -> None:
        """Dispatch reached the sink on ``tick``: end the outage if this was its check."""
        if tick.check:
            seconds = self.record.sink_up()
            if seconds is not None:
                self.log.warning("sink available again after %.0fs; draining resumes", seconds)


class OutageLog:
    """Logs an outage seen by this process: once when it starts, at most once per back-off
    step while it lasts (1, 2, 4, 8, then every 15 seconds), once when it ends.
    """

    def __init__(
        self, what: str, log: logging.Logger = logger, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what = what
        self.log = log
        self.clock = clock
        self.since: float | None = None
        self.steps = 0
        self.next_line = 0.0

    def failed(self, error: object) -> None:
        """One more failure; logs a line if it starts the outage or a back-off step is over."""
        now = self.clock()
        if self.since is None:
            self.since, self.steps = now, 0
            self.log.warning("%s unavailable: %s", self.what, error)
        elif now >= self.next_line:
            self.steps += 1
            self.log.warning(
                "%s still unavailable after %.0fs: %s", self.what, now - self.since, error
            )
        else:
            return
        self.next_line = now + retry.outage_delay(self.steps)

    def succeeded(self) -> None:
        """A call went through; logs the end of the outage, if there was one."""
        if self.since is not None:
            self.log.warning("%s available again after %.0fs", self.what, self.clock() - self.since)
            self.since = None
