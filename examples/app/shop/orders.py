"""What the shop does with orders. Each function writes the order and appends its event in the
caller's transaction: both commit together, or neither does, and nothing is published before
the commit. The caller owns the transaction (``with Session() as s, s.begin(): ...``).
"""

from __future__ import annotations

import uuid

from models import append_event, create_run
from sqlalchemy.orm import Session

from shop.schema import Order, OrderStatus


class OrderError(Exception):
    """The order cannot make this change."""


def place_order(session: Session, customer: str, total_cents: int) -> Order:
    """Create an order, with a stream of its own, and append ``order.placed``.

    With ``kick=True`` the outbox queues a drain right after the commit, so the event reaches
    the stream without waiting for beat (under the test plugin, the kick is only recorded).
    """
    run = create_run(session)
    order = Order(id=uuid.uuid4(), customer=customer, total_cents=total_cents, run_id=run.id)
    append_event(
        session,
        run.id,
        "order.placed",
        {"order_id": str(order.id), "customer": customer, "total_cents": total_cents},
        kick=True,
    )
    session.add(order)
    session.flush()  # the database checks the order now: a refused one takes its event along
    return order


def _order(session: Session, order_id: uuid.UUID) -> Order:
    order = session.get(Order, order_id, with_for_update=True)
    if order is None:
        raise OrderError(f"no order {order_id}")
    return order


def pay_order(session: Session, order_id: uuid.UUID) -> Order:
    """Mark a placed order paid and append ``order.paid``."""
    order = _order(session, order_id)
    if order.status != OrderStatus.PLACED:
        raise OrderError(f"order {order_id} is {order.status}, it cannot be paid")
    order.status = OrderStatus.PAID
    append_event(session, order.run_id, "order.paid", {"order_id": str(order.id)}, kick=True)
    return order


def cancel_order(session: Session, order_id: uuid.UUID, reason: str) -> Order:
    """Cancel an order that is not paid yet and append ``order.cancelled``."""
    order = _order(session, order_id)
    if order.status != OrderStatus.PLACED:
        raise OrderError(f"order {order_id} is {order.status}, it cannot be cancelled")
    order.status = OrderStatus.CANCELLED
    append_event(
        session,
        order.run_id,
        "order.cancelled",
        {"order_id": str(order.id), "reason": reason},
        kick=True,
    )
    return order
