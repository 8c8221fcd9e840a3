"""The producer API: create_run and append_event inside the caller's transaction."""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import (
    InvalidPayload,
    InvalidRunId,
    PayloadTooLarge,
    Run,
    RunEvent,
    RunExists,
    RunOutbox,
    UnknownRun,
    append_event,
    create_run,
)
from models.db import make_engine
from tasks import Status, drain_outbox_for_run
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings
from tests.helpers import seed


def _seqs(Session: sessionmaker[Session], run_id: uuid.UUID) -> list[int]:
    with Session() as session:
        return list(
            session.scalars(
                select(RunEvent.seq).where(RunEvent.run_id == run_id).order_by(RunEvent.seq)
            )
        )


def test_create_run_sets_the_id_at_once_and_creates_the_outbox_row(
    Session: sessionmaker[Session],
) -> None:
    with Session() as session, session.begin():
        run = create_run(session)
        assert isinstance(run.id, uuid.UUID)
        given = create_run(session, "6f1c1f50-6a7e-4a39-9a8e-5f4c1d0b7c11")
    with Session() as session:
        cursors = dict(session.execute(select(RunOutbox.run_id, RunOutbox.next_seq)).all())
    assert cursors == {run.id: 1, given.id: 1}
    assert str(given.id) == "6f1c1f50-6a7e-4a39-9a8e-5f4c1d0b7c11"


def test_sequence_numbers_are_gapless_and_a_rollback_leaves_no_gap(
    Session: sessionmaker[Session],
) -> None:
    [run_id] = seed(Session, events=2)
    with Session() as session, session.begin():
        event = append_event(session, run_id, "kept", {})
        assert (event.seq, event.id is not None) == (3, True)
    with Session() as session:
        session.begin()
        append_event(session, run_id, "rolled back", {})
        session.rollback()
    with Session() as session, session.begin():
        assert append_event(session, run_id, "after rollback", {}).seq == 4

    assert _seqs(Session, run_id) == [1, 2, 3, 4]


def test_concurrent_producers_of_one_run_get_distinct_consecutive_seqs(
    Session: sessionmaker[Session],
) -> None:
    [run_id] = seed(Session, events=0)

    def produce() -> None:
        for _ in range(20):
            with Session() as session, session.begin():
                append_event(session, run_id, "t", {})

    with ThreadPoolExecutor(max_workers=5) as pool:
        for producer in [pool.submit(produce) for _ in range(5)]:
            producer.result(timeout=60)  # re-raises whatever a producer raised

    assert _seqs(Session, run_id) == list(range(1, 101))


@pytest.fixture
def impatient(db_url: object) -> sessionmaker[Session]:
    """Sessions that fail at once (lock_timeout 300 ms) instead of waiting for a row lock."""
    engine: Engine = make_engine(db_url, connect_args={"options": "-c lock_timeout=300"})  # type: ignore[arg-type]
    yield sessionmaker(engine)  # type: ignore[misc]
    engine.dispose()


def test_a_producer_never_waits_for_a_drain_holding_the_run(
    Session: sessionmaker[Session],
    impatient: sessionmaker[Session],
) -> None:
    [run_id] = seed(Session, events=1)
    with Session() as drainer, drainer.begin():
        # Exactly the locks a drain holds while it publishes.
        drainer.execute(text("SELECT 1 FROM runs WHERE id = :r FOR KEY SHARE"), {"r": run_id})
        drainer.execute(
            text("SELECT 1 FROM run_outbox WHERE run_id = :r FOR UPDATE"), {"r": run_id}
        )
        with impatient() as producer, producer.begin():
            assert append_event(producer, run_id, "while draining", {}).seq == 2


def test_a_drain_never_waits_for_a_producer_with_an_open_transaction(
    Session: sessionmaker[Session],
    impatient: sessionmaker[Session],
    publisher: RedisStreamSink,
    settings: Settings,
) -> None:
    [run_id] = seed(Session, events=1)
    with Session() as producer, producer.begin():
        append_event(producer, run_id, "uncommitted", {})  # holds the counter row's lock
        result = drain_outbox_for_run(
            run_id, session_factory=impatient, publisher=publisher, settings=settings
        )
    assert (result.status, result.published) == (Status.DRAINED, 1)


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (object(), InvalidPayload, "not JSON-serialisable"),
        ({"a": {1, 2}}, InvalidPayload, "not JSON-serialisable"),
        ({"x": math.nan}, InvalidPayload, "not JSON-serialisable"),
        ({"x": "nul\x00byte"}, InvalidPayload, "U\\+0000"),
        ({"blob": "x" * 200}, PayloadTooLarge, "over the limit of 100 bytes"),
    ],
)
def test_bad_payloads_are_refused_and_nothing_is_written(
    Session: sessionmaker[Session], payload: object, error: type[Exception], message: str
) -> None:
    [run_id] = seed(Session, events=1)
    with Session() as session, session.begin(), pytest.raises(error, match=message):
        append_event(session, run_id, "bad", payload, max_bytes=100)
    with Session() as session:
        assert session.scalar(select(func.count()).select_from(RunEvent)) == 1
        assert session.scalar(select(Run.last_seq).where(Run.id == run_id)) == 1


def test_payloads_up_to_the_limit_and_escaped_nul_text_are_accepted(
    Session: sessionmaker[Session],
) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session, session.begin():
        append_event(session, run_id, "edge", {"s": "x" * 92}, max_bytes=100)  # exactly 100 bytes
        append_event(session, run_id, "text", {"s": "a literal \\u0000 is fine"})
    assert _seqs(Session, run_id) == [1, 2]


def test_the_default_payload_limit_is_one_mebibyte(Session: sessionmaker[Session]) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session, session.begin(), pytest.raises(PayloadTooLarge, match="1048576"):
        append_event(session, run_id, "huge", "x" * (1024 * 1024))


@pytest.mark.parametrize("bad_id", ["nope", "", 123, None, b"6f1c1f50-6a7e-4a39-9a8e-5f4c1d0b7c11"])
def test_malformed_run_ids_are_refused(Session: sessionmaker[Session], bad_id: object) -> None:
    with Session() as session, pytest.raises(InvalidRunId, match="run id must be a UUID"):
        append_event(session, bad_id, "t", {})  # type: ignore[arg-type]


def test_an_unknown_run_is_a_clear_error(Session: sessionmaker[Session]) -> None:
    unknown = uuid.uuid4()
    with Session() as session, pytest.raises(UnknownRun, match=str(unknown)):
        append_event(session, unknown, "t", {})


def test_an_empty_event_type_is_refused(Session: sessionmaker[Session]) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session, pytest.raises(InvalidPayload, match="event type"):
        append_event(session, run_id, "", {})


def test_creating_a_run_with_a_taken_id_is_a_clear_error(Session: sessionmaker[Session]) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session, pytest.raises(RunExists, match=str(run_id)):
        create_run(session, run_id)
