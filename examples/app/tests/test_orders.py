"""The shop's orders publish exactly their events, in order, when (and only when) committed.

Written against the outbox plugin's public fixtures only: ``outbox_drain`` drains when the
test says so, ``outbox_sink`` reads a stream back, ``outbox_kicker`` shows what a commit
kicked, ``outbox_eager`` runs the outbox's Celery tasks in the test.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import orm
from sqlalchemy.exc import IntegrityError
from tasks import Status, drain_run
from tasks.testing import Drainer, RecordingKicker, Streams, assert_events

from shop import Order, OrderError, cancel_order, pay_order, place_order


def placed(order: Order) -> tuple[str, object]:
    payload = {"order_id": str(order.id), "customer": order.customer, "total_cents": 1990}
    return ("order.placed", payload)


def new_order(Session: orm.sessionmaker[orm.Session], customer: str = "ada") -> Order:
    with Session() as session, session.begin():
        return place_order(session, customer, 1990)


def test_a_placed_order_publishes_order_placed_to_its_own_stream(
    Session: orm.sessionmaker[orm.Session], outbox_drain: Drainer, outbox_sink: Streams
) -> None:
    order = new_order(Session)

    drained = outbox_drain.run(order.run_id)

    assert drained.result.status is Status.DRAINED
    assert_events(drained.entries(order.run_id), [placed(order)])
    assert_events(outbox_sink.entries(order.run_id), [placed(order)])


def test_an_order_paid_publishes_placed_then_paid_in_that_order(
    Session: orm.sessionmaker[orm.Session], outbox_drain: Drainer, outbox_sink: Streams
) -> None:
    order = new_order(Session)
    with Session() as session, session.begin():
        pay_order(session, order.id)

    outbox_drain.until_idle()

    assert_events(
        outbox_sink.entries(order.run_id),
        [placed(order), ("order.paid", {"order_id": str(order.id)})],
    )
    assert [entry.seq for entry in outbox_sink.entries(order.run_id)] == [1, 2]


def test_nothing_is_published_before_the_transaction_commits(
    Session: orm.sessionmaker[orm.Session], outbox_drain: Drainer, outbox_sink: Streams
) -> None:
    with Session() as session, session.begin():
        order = place_order(session, "ada", 1990)
        assert outbox_drain.once().published == 0  # a drain now sees nothing to publish

    assert_events(outbox_drain.once().entries(order.run_id), [placed(order)])


def test_an_order_the_database_refuses_takes_its_event_with_it(
    Session: orm.sessionmaker[orm.Session], outbox_drain: Drainer
) -> None:
    with pytest.raises(IntegrityError), Session() as session, session.begin():
        place_order(session, "ada", 0)  # total_cents must be positive

    assert outbox_drain.once().result.runs == 0


def test_a_cancelled_order_cannot_be_paid_and_publishes_no_payment(
    Session: orm.sessionmaker[orm.Session], outbox_drain: Drainer, outbox_sink: Streams
) -> None:
    order = new_order(Session)
    with Session() as session, session.begin():
        cancel_order(session, order.id, "changed my mind")
    with (
        pytest.raises(OrderError, match="is cancelled, it cannot be paid"),
        Session() as session,
        session.begin(),
    ):
        pay_order(session, order.id)

    outbox_drain.until_idle()

    assert_events(
        outbox_sink.entries(order.run_id),
        [
            placed(order),
            ("order.cancelled", {"order_id": str(order.id), "reason": "changed my mind"}),
        ],
    )


def test_each_order_publishes_to_a_stream_of_its_own(
    Session: orm.sessionmaker[orm.Session], outbox_drain: Drainer
) -> None:
    ada, bob = new_order(Session, "ada"), new_order(Session, "bob")

    drained = outbox_drain.until_idle()

    assert ada.run_id != bob.run_id
    assert_events(drained.entries(ada.run_id), [placed(ada)])
    assert_events(drained.entries(bob.run_id), [placed(bob)])


def test_placing_an_order_kicks_a_drain_but_nothing_drains_until_the_test_says_so(
    Session: orm.sessionmaker[orm.Session],
    outbox_drain: Drainer,
    outbox_kicker: RecordingKicker,
    outbox_sink: Streams,
) -> None:
    order = new_order(Session)

    assert outbox_kicker.runs == {order.run_id}
    assert outbox_sink.entries(order.run_id) == []
    assert outbox_drain.run(order.run_id).published == 1


@pytest.mark.usefixtures("outbox_eager")
def test_the_outbox_drain_task_runs_in_the_test_when_the_shop_calls_it(
    Session: orm.sessionmaker[orm.Session], outbox_sink: Streams
) -> None:
    order = new_order(Session)

    result = drain_run.delay(str(order.run_id)).get()  # eager: no broker, no worker

    assert (result["status"], result["published"]) == ("drained", 1)
    assert_events(outbox_sink.entries(order.run_id), [placed(order)])


@pytest.mark.parametrize("outbox_sink_kind", ["memory"])
def test_the_same_tests_run_without_redis_on_the_in_memory_sink(
    outbox_sink_kind: str,
    Session: orm.sessionmaker[orm.Session],
    outbox_drain: Drainer,
    outbox_sink: Streams,
) -> None:
    order = new_order(Session)

    outbox_drain.until_idle()

    assert outbox_sink.kind == "memory"
    assert_events(outbox_sink.entries(order.run_id), [placed(order)])


def test_an_unknown_order_is_an_error_and_writes_nothing(
    Session: orm.sessionmaker[orm.Session], outbox_drain: Drainer
) -> None:
    with pytest.raises(OrderError, match="no order"), Session() as session, session.begin():
        pay_order(session, uuid.uuid4())

    assert outbox_drain.once().result.runs == 0
