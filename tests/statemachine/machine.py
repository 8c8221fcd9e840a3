"""A model of what exactly-once delivery means, and a Hypothesis state machine that drives the
real drain core (``tasks.drain``) through random interleavings of producers, drains, crashes,
outages, refusals, foreign entries, deletes and resumes, checking the store and the sink
against the model after every step.

The model keeps, per run, the payload token of each committed event (its seq is its place in
the list), the drain's cursor, why the run is parked, and the stream the sink must hold. It
does not predict how far a drain gets (that depends on the batch limits); it takes the
drain's result (or, for a pass, the cursor the store reports) and checks that every entry it
consumed was one the rules allow, that the counts and the status are the ones those entries
imply, and that the sink then holds exactly the model's stream. Tokens are unique across the
whole example, so a rolled-back, duplicated or misplaced event cannot go unnoticed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import uuid

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from tasks.drain import DrainResult, Fault, Limits, Status, drain_pass, drain_runs
from tests.statemachine.worlds import Crash, CrashingSink, World

LIMITS = Limits(batch_size=4, max_batches=2, max_attempts=2, group_size=2, dispatch_limit=100)


@dataclasses.dataclass
class ModelRun:
    events: list[str] = dataclasses.field(default_factory=list)  # tokens; seq = index + 1
    cursor: int = 1  # the next seq to publish
    parked: Fault | None = None  # why the run is stalled: REFUSED or CONFLICT
    attempts: int = 0
    refusing: bool = False

    def pending(self) -> bool:
        return self.cursor <= len(self.events)


class Model:
    """What the store and the sink must hold."""

    def __init__(self) -> None:
        self.runs: dict[uuid.UUID, ModelRun] = {}  # live runs
        self.known: set[uuid.UUID] = set()  # every run id ever created
        self.streams: dict[uuid.UUID, dict[int, str]] = {}  # run -> seq -> token
        self.tops: dict[uuid.UUID, int] = {}  # a stream's last id, kept after entries go
        self.rolled_back: set[str] = set()
        self.outage = False
        self._tokens = itertools.count(1)

    def token(self) -> str:
        return f"t{next(self._tokens)}"

    def stream(self, run_id: uuid.UUID) -> dict[int, str]:
        return self.streams.setdefault(run_id, {})

    def put(self, run_id: uuid.UUID, seq: int, token: str) -> None:
        self.stream(run_id)[seq] = token
        self.tops[run_id] = max(self.tops.get(run_id, 0), seq)

    def verdict(self, run_id: uuid.UUID, seq: int) -> str:
        """What the sink does with the run's event ``seq``: add, present or conflict."""
        run, stream = self.runs[run_id], self.stream(run_id)
        token = run.events[seq - 1]
        if seq in stream:
            return "present" if stream[seq] == token else "conflict"
        if seq > self.tops.get(run_id, 0):
            return "add"
        # A gap below the stream's top: trimmed by a consumer only if the next entry up is a
        # later event of this very run.
        later = sorted(s for s in stream if s > seq)
        ours = bool(later) and later[0] <= len(run.events)
        ours = ours and stream[later[0]] == run.events[later[0] - 1]
        return "present" if ours else "conflict"

    def first_conflict(self, run_id: uuid.UUID, start: int) -> int | None:
        run = self.runs[run_id]
        for seq in range(start, len(run.events) + 1):
            if self.verdict(run_id, seq) == "conflict":
                return seq
        return None

    def consume(self, run_id: uuid.UUID, count: int) -> tuple[int, int]:
        """The drain moved the run's cursor by ``count``: check each entry, return (added,
        present)."""
        run = self.runs[run_id]
        added = present = 0
        for seq in range(run.cursor, run.cursor + count):
            assert seq <= len(run.events), f"{run_id} published seq {seq}, never committed"
            verdict = self.verdict(run_id, seq)
            assert verdict != "conflict", f"{run_id} seq {seq} taken as published: {verdict}"
            added += verdict == "add"
            present += verdict == "present"
            self.put(run_id, seq, run.events[seq - 1])
        run.cursor += count
        if count:
            run.attempts = 0
        return added, present

    def conflicted(self, run_id: uuid.UUID) -> None:
        """The sink found a conflict at the run's cursor or later in the batch: the entries
        before it were added; the run is parked."""
        run = self.runs[run_id]
        at = self.first_conflict(run_id, run.cursor)
        assert at is not None, f"{run_id} parked for a conflict the model does not see"
        for seq in range(run.cursor, at):
            self.put(run_id, seq, run.events[seq - 1])
        run.parked = Fault.CONFLICT

    def refused(self, run_id: uuid.UUID) -> bool:
        """The sink refused the run: count it; return whether it is now parked."""
        run = self.runs[run_id]
        assert run.refusing, f"{run_id} refused, but the sink takes its entries"
        run.attempts += 1
        if run.attempts >= LIMITS.max_attempts:
            run.parked = Fault.REFUSED
        return run.parked is not None

    def settle(self, run_id: uuid.UUID, result: DrainResult) -> None:
        """Check one run's drain result against the model, and apply it."""
        # `pytest --hypothesis-show-statistics` shows how often each outcome was reached.
        event(f"drain: {result.status}" + (f" ({result.fault})" if result.fault else ""))
        run = self.runs.get(run_id)
        if run is None:
            assert result.status is Status.MISSING, result
            return
        if run.parked is not None:
            assert result.status is Status.STALLED, result
            assert result.published == result.already_present == 0, result
            return
        if result.fault is Fault.OUTAGE:
            assert self.outage, f"an outage the model did not cause: {result}"
        added, present = self.consume(run_id, result.published + result.already_present)
        assert (added, present) == (result.published, result.already_present), result
        if result.fault is Fault.REFUSED:
            parked = self.refused(run_id)
            assert result.status is (Status.STALLED if parked else Status.MORE), result
        elif result.fault is Fault.CONFLICT:
            assert result.status is Status.STALLED, result
            self.conflicted(run_id)
        elif result.fault is None:
            assert not (self.outage and run.pending() and result.status is Status.DRAINED)
            if result.status is Status.DRAINED:
                assert not run.pending(), f"{run_id} drained with seq {run.cursor} pending"
            else:  # a batch limit was hit: so the drain moved the run
                assert result.status is Status.MORE, result
                assert result.published + result.already_present > 0, result
            if run.pending() and not self.outage:
                assert not run.refusing, f"{run_id}: the sink's refusal went unreported"
        if self.outage and result.status is not Status.DRAINED:
            assert result.fault is Fault.OUTAGE, result
            assert result.published == result.already_present == 0, result


class ExactlyOnce(RuleBasedStateMachine):
    """Subclassed per test with ``make_world`` set; see tests/statemachine/test_exactly_once."""

    runs = Bundle("runs")
    deleted = Bundle("deleted")

    def make_world(self) -> World:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.world = self.make_world()
        self.model = Model()

    # Producers.

    @initialize(target=runs)
    def first_run(self) -> uuid.UUID:
        return self._create(uuid.uuid4())

    @rule(target=runs)
    def create_run(self) -> uuid.UUID:
        return self._create(uuid.uuid4())

    def _create(self, run_id: uuid.UUID) -> uuid.UUID:
        self.world.create_run(run_id)
        self.model.runs[run_id] = ModelRun()
        self.model.known.add(run_id)
        return run_id

    @rule(run_id=runs, count=st.integers(1, 4), commit=st.booleans())
    def append(self, run_id: uuid.UUID, count: int, commit: bool) -> None:
        run = self.model.runs.get(run_id)
        if run is None:
            return  # deleted; its id waits in `deleted` to be created again
        tokens = [self.model.token() for _ in range(count)]
        self.world.append(run_id, [{"t": t} for t in tokens], commit)
        if commit:
            run.events.extend(tokens)
        else:
            self.model.rolled_back.update(tokens)

    @rule(target=deleted, run_id=consumes(runs))
    def delete_run(self, run_id: uuid.UUID) -> uuid.UUID:
        run = self.model.runs.pop(run_id, None)
        if run is not None:
            if run.refusing:  # the operator clears the key that made the sink refuse
                self.world.accept(run_id)
            self.world.delete_run(run_id)
        return run_id

    @rule(target=runs, run_id=consumes(deleted))
    def create_again(self, run_id: uuid.UUID) -> uuid.UUID:
        return self._create(run_id)  # its old stream, if any, is still there

    # Drains.

    @rule(run_ids=st.lists(st.one_of(runs, deleted), min_size=1, max_size=4, unique=True))
    def drain(self, run_ids: list[uuid.UUID]) -> None:
        """Drain one run, or several together (a group, as dispatch and kicks queue them)."""
        results = drain_runs(self.world.store, self.world.sink(), run_ids, LIMITS)
        assert [r.run_id for r in results] == run_ids
        for result in results:
            self.model.settle(result.run_id, result)

    @rule()
    def drain_pass(self) -> None:
        before = {run_id: run.cursor for run_id, run in self.model.runs.items()}
        result = drain_pass(self.world.store, self.world.sink(), LIMITS)
        added = present = 0
        for run_id, run in self.model.runs.items():
            cursor = self.world.cursor(run_id)
            assert cursor is not None
            if run.parked is not None:
                assert cursor.next_seq == before[run_id]
                continue
            a, p = self.model.consume(run_id, cursor.next_seq - before[run_id])
            added, present = added + a, present + p
            if cursor.status == "stalled":
                if run.refusing:
                    assert self.model.refused(run_id)
                else:
                    self.model.conflicted(run_id)
            elif cursor.attempts > run.attempts:
                assert not self.model.refused(run_id)
        assert (result.published, result.already_present) == (added, present), result
        if self.model.outage:
            assert result.outage is not None or not any(
                r.pending() and r.parked is None for r in self.model.runs.values()
            ), result
        left = any(r.pending() and r.parked is None for r in self.model.runs.values())
        assert (result.status is Status.MORE) == (left or result.outage is not None), result

    @rule(run_id=runs)
    def crash_after_the_sink_took_the_batch(self, run_id: uuid.UUID) -> None:
        run = self.model.runs.get(run_id)
        crashing = CrashingSink(self.world.sink())
        with contextlib.suppress(Crash):
            drain_runs(self.world.store, crashing, [run_id], LIMITS)
        if crashing.outcome is None:  # nothing was published: nothing to crash after
            return
        assert run is not None
        assert run.parked is None
        # The sink kept what it took; the store rolled back, so the cursor has not moved.
        if run_id in crashing.outcome.added:
            for entry in crashing.entries:
                verdict = self.model.verdict(run_id, entry.seq)
                assert verdict != "conflict", f"seq {entry.seq} taken over a conflict"
                self.model.put(run_id, entry.seq, run.events[entry.seq - 1])
        elif run_id in crashing.outcome.conflicts:
            at = self.model.first_conflict(run_id, run.cursor)
            assert at is not None
            for seq in range(run.cursor, at):
                self.model.put(run_id, seq, run.events[seq - 1])
        else:
            assert run_id in crashing.outcome.refused
            assert run.refusing

    # The sink's faults, and what an operator does about them.

    @rule()
    def sink_goes_away_or_comes_back(self) -> None:
        self.world.outage = self.model.outage = not self.model.outage

    @rule(target=runs)
    def create_a_run_the_sink_refuses(self) -> uuid.UUID:
        # Refusing replaces the run's stream on Redis (a key of another type), so only a run
        # with no stream yet is refused.
        run_id = self._create(uuid.uuid4())
        self.world.refuse(run_id)
        self.model.runs[run_id].refusing = True
        return run_id

    @rule(run_id=runs)
    def sink_takes_the_run_again(self, run_id: uuid.UUID) -> None:
        run = self.model.runs.get(run_id)
        if run is None or not run.refusing:
            return
        self.world.accept(run_id)
        run.refusing = False

    @rule(run_id=runs, ahead=st.integers(0, 3))
    def a_foreign_writer_takes_an_id(self, run_id: uuid.UUID, ahead: int) -> None:
        run = self.model.runs.get(run_id)
        if run is None or run.refusing:
            return
        seq = self.model.tops.get(run_id, 0) + 1 + ahead
        token = f"foreign-{self.model.token()}"
        self.world.put_foreign(run_id, seq, json.dumps({"t": token}))
        self.model.put(run_id, seq, token)

    @rule(run_id=st.one_of(runs, deleted))
    def operator_deletes_the_stream(self, run_id: uuid.UUID) -> None:
        run = self.model.runs.get(run_id)
        if run is not None and run.refusing:
            return
        self.world.delete_stream(run_id)
        self.model.streams.pop(run_id, None)
        self.model.tops.pop(run_id, None)

    @rule(run_id=runs)
    def operator_resumes(self, run_id: uuid.UUID) -> None:
        resumed = self.world.store.resume([run_id])
        run = self.model.runs.get(run_id)
        if run is None or run.parked is None:
            assert resumed == [], resumed
            return
        assert resumed == [run_id]
        run.parked, run.attempts = None, 0

    # What must hold after every step.

    @invariant()
    def the_sink_holds_the_models_streams(self) -> None:
        for run_id in self.model.known:
            entries = self.world.stream(run_id)
            seqs = [e.seq for e in entries]
            assert seqs == sorted(set(seqs)), f"{run_id}: {seqs}"
            held = {e.seq: json.loads(e.payload)["t"] for e in entries}
            expected = {} if self._refusing(run_id) else self.model.streams.get(run_id, {})
            assert held == expected, f"{run_id}: the sink holds {held}, the model {expected}"
            assert not set(held.values()) & self.model.rolled_back, held

    @invariant()
    def the_store_holds_the_models_cursors(self) -> None:
        for run_id in self.model.known:
            cursor, run = self.world.cursor(run_id), self.model.runs.get(run_id)
            if run is None:
                assert cursor is None, f"{run_id} was deleted"
                continue
            assert cursor is not None, f"{run_id} is gone from the store"
            assert cursor.next_seq == run.cursor, (run_id, cursor, run)
            assert cursor.published == frozenset(range(1, run.cursor)), (run_id, cursor)
            assert (cursor.status == "stalled") == (run.parked is not None), (run_id, cursor, run)
            assert cursor.attempts == run.attempts, (run_id, cursor, run)

    def _refusing(self, run_id: uuid.UUID) -> bool:
        run = self.model.runs.get(run_id)
        return run is not None and run.refusing
