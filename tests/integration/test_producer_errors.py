"""The producer API's own errors, on real PostgreSQL: a database that cannot be reached is
DatabaseUnavailable (never the driver's OperationalError), a lock timeout stays what it is,
and a payload key that is not a string is refused instead of being stored as a string."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import URL, Engine, select, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models import InvalidPayload, RunEvent, append_event, create_run
from models.db import make_engine
from models.errors import DatabaseUnavailable, OutboxError
from tasks.errors import StoreUnavailable
from tests.helpers import seed

ProducerCall = Callable[[Session], object]

CALLS: list[tuple[str, ProducerCall]] = [
    ("create_run", lambda session: create_run(session)),
    ("create_run with an id", lambda session: create_run(session, uuid.uuid4())),
    ("append_event", lambda session: append_event(session, uuid.uuid4(), "t", {"n": 1})),
]


@pytest.fixture
def closed_port(db_url: URL) -> Iterator[sessionmaker[Session]]:
    """Sessions on an engine whose server is this test's, but on a port nothing listens on."""
    engine: Engine = make_engine(db_url.set(port=1))
    yield sessionmaker(engine)
    engine.dispose()


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
def test_a_producer_whose_database_refuses_the_connection_gets_database_unavailable(
    closed_port: sessionmaker[Session], name: str, call: ProducerCall
) -> None:
    with closed_port() as session, pytest.raises(DatabaseUnavailable) as raised:
        call(session)

    message = str(raised.value)
    assert message.startswith("the database could not be reached (connection failed: ")
    assert "Connection refused" in message
    assert message.endswith("; check OUTBOX_DATABASE_URL and that the server is running")
    assert "\n" not in message
    assert len(message) < 300
    assert isinstance(raised.value.__cause__, OperationalError)  # raised from the original
    assert isinstance(raised.value, OutboxError)


def _terminate(admin: sessionmaker[Session], pid: int) -> None:
    """End the backend ``pid`` and wait (up to 10 s) until it is gone."""
    with admin() as session:
        ended = session.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
    assert ended is True


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
def test_a_producer_whose_connection_is_killed_mid_transaction_gets_database_unavailable(
    Session: sessionmaker[Session], name: str, call: ProducerCall
) -> None:
    [run_id] = seed(Session, events=1)
    with Session() as session:
        session.begin()
        append_event(session, run_id, "before", {"n": 1})  # the transaction has written
        pid = session.scalar(text("SELECT pg_backend_pid()"))
        assert isinstance(pid, int)
        _terminate(Session, pid)

        with pytest.raises(DatabaseUnavailable) as raised:
            call(session)
        assert isinstance(raised.value.__cause__, OperationalError | InterfaceError)
        assert "\n" not in str(raised.value)
        session.rollback()

    # The killed transaction left nothing; the next session works as before.
    with Session() as session:
        assert session.scalars(select(RunEvent.seq).where(RunEvent.run_id == run_id)).all() == [1]


def test_a_lock_timeout_is_not_taken_for_an_unreachable_database(
    Session: sessionmaker[Session], db_url: URL
) -> None:
    # A timeout (SQLSTATE 55P03) is an OperationalError too, but the connection is fine.
    engine = make_engine(db_url, connect_args={"options": "-c lock_timeout=100"})
    try:
        [run_id] = seed(Session, events=0)
        with Session() as holder, holder.begin():
            append_event(holder, run_id, "holds the counter row", {})
            with sessionmaker(engine)() as waiter, pytest.raises(OperationalError) as raised:
                append_event(waiter, run_id, "waits", {})
        assert not isinstance(raised.value, DatabaseUnavailable)
        assert "lock timeout" in str(raised.value)
    finally:
        engine.dispose()


def test_the_drain_sides_store_unavailable_is_the_producers_database_unavailable() -> None:
    assert StoreUnavailable is DatabaseUnavailable


@pytest.mark.parametrize(
    ("payload", "where", "key"),
    [
        ({1: "x"}, "payload", "1 (int)"),
        ({"a": [{"b": {None: 1}}]}, 'payload["a"][0]["b"]', "None (NoneType)"),
        ({"a": {"b": {True: 1}}}, 'payload["a"]["b"]', "True (bool)"),
        ([[{"é": {2.5: "x"}}]], 'payload[0][0]["é"]', "2.5 (float)"),
        (({"ok": 1}, {"ok": {"n": 1, 7: 2}}), 'payload[1]["ok"]', "7 (int)"),
    ],
)
def test_a_payload_key_that_is_not_a_string_is_refused_naming_where_it_is(
    Session: sessionmaker[Session], payload: object, where: str, key: str
) -> None:
    [run_id] = seed(Session, events=0)
    with Session() as session, session.begin(), pytest.raises(InvalidPayload) as raised:
        append_event(session, run_id, "t", payload)
    assert str(raised.value) == (
        f"payload has a key that is not a string, {key}, in {where}: "
        "JSON object keys must be strings"
    )
    with Session() as session:
        assert session.scalars(select(RunEvent).where(RunEvent.run_id == run_id)).all() == []


class Name(str):
    """A key type of the application's own: a str, so JSON stores it as it is."""


def test_string_keys_at_any_depth_are_stored_exactly_as_given(
    Session: sessionmaker[Session],
) -> None:
    payload = {
        "a": [{"b": {"c": [1, 2.5, True, None, {"d": "e"}]}}, []],
        Name("named"): {"": {}},
        "é": ("tuple", {"t": 1}),
    }
    [run_id] = seed(Session, events=0)
    with Session() as session, session.begin():
        append_event(session, run_id, "t", payload)
    with Session() as session:
        stored = session.scalar(select(RunEvent.payload).where(RunEvent.run_id == run_id))
    assert stored == {
        "a": [{"b": {"c": [1, 2.5, True, None, {"d": "e"}]}}, []],
        "named": {"": {}},
        "é": ["tuple", {"t": 1}],
    }
