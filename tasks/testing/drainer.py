"""Step-wise draining for tests: drain one run, every run once, or until nothing is left.

Each step first asks the guard whether a foreign drainer is attached to the database (it
fails the test naming it, rather than letting rows vanish), then drains in this process
through the public drain API with explicit collaborators, and returns the API's result with
the entries this step added to each run's stream.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from models.ids import parse_run_id
from tasks import api
from tasks.drain import DrainResult, PassResult, Status
from tasks.pg import SessionFactory
from tasks.settings import Settings
from tasks.sink import StreamEntry
from tasks.testing.guard import ForeignDrainer, Guard
from tasks.testing.sinks import RecordingSink, Streams, events

ResultT = TypeVar("ResultT")

DEFAULT_MAX_PASSES = 100


class NotIdle(AssertionError):
    """Draining did not reach a state with nothing left to publish."""


@dataclasses.dataclass(frozen=True)
class Drained(Generic[ResultT]):
    """What one step published: the drain API's result, and the entries it added per run."""

    result: ResultT
    added: Mapping[uuid.UUID, list[StreamEntry]]

    @property
    def published(self) -> int:
        """How many entries this step added, over every run."""
        return sum(len(entries) for entries in self.added.values())

    def entries(self, run_id: uuid.UUID | str) -> list[StreamEntry]:
        """The entries this step added to the run's stream, in seq order."""
        return list(self.added.get(parse_run_id(run_id), []))

    def events(self, run_id: uuid.UUID | str) -> list[tuple[str, object]]:
        """The (type, payload) of each entry this step added to the run's stream."""
        return events(self.entries(run_id))


class Drainer:
    """Drains a test's outbox when the test says so, after checking for foreign drainers."""

    def __init__(
        self,
        session_factory: SessionFactory,
        streams: Streams,
        settings: Settings,
        guard: Guard,
        *,
        on_foreign: Callable[[str], None] | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.streams = streams
        self.settings = settings
        self.guard = guard
        self._on_foreign = on_foreign
        self._sink = RecordingSink(streams.publisher)

    def _check(self) -> None:
        problem = self.guard.problem()
        if problem is not None:
            if self._on_foreign is not None:
                self._on_foreign(problem)  # the plugin fails the test with the line alone
            raise ForeignDrainer(problem)

    def run(self, run_id: uuid.UUID | str) -> Drained[DrainResult]:
        """Drain one run (``drain_outbox_for_run``): its result and the entries it added.

        Raises what the API raises: PublishError when the sink refused the run, SinkUnavailable
        when the sink could not be reached.
        """
        self._check()
        self._sink.take()
        try:
            result = api.drain_outbox_for_run(
                run_id,
                session_factory=self.session_factory,
                publisher=self._sink,
                settings=self.settings,
            )
        finally:
            added = self._sink.take()
        return Drained(result, added)

    def once(self) -> Drained[PassResult]:
        """One pass over every active run with pending events (``drain_outbox_once``)."""
        self._check()
        self._sink.take()
        try:
            result = api.drain_outbox_once(
                session_factory=self.session_factory, publisher=self._sink, settings=self.settings
            )
        finally:
            added = self._sink.take()
        return Drained(result, added)

    def until_idle(self, max_passes: int | None = None) -> Drained[list[PassResult]]:
        """Pass after pass until no active run has pending events; every pass's result, and
        every entry added.

        A refused run is retried on each pass until it is parked (``max_attempts``), so this
        ends. Raises NotIdle when the sink is unavailable, or after ``max_passes`` passes
        (default: 100, or more if parking a run takes more).
        """
        if max_passes is None:
            max_passes = max(DEFAULT_MAX_PASSES, self.settings.max_attempts + 1)
        passes: list[PassResult] = []
        added: dict[uuid.UUID, list[StreamEntry]] = {}
        while len(passes) < max_passes:
            step = self.once()
            passes.append(step.result)
            for run_id, entries in step.added.items():
                added.setdefault(run_id, []).extend(entries)
            if step.result.outage is not None:
                raise NotIdle(f"the sink is unavailable: {step.result.outage}")
            if step.result.status is Status.DRAINED:
                return Drained(passes, added)
        raise NotIdle(f"runs still had pending events after {max_passes} passes")
