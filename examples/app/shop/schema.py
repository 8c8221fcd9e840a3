"""The shop's tables, in metadata of its own: the outbox's tables come from its migrations."""

from __future__ import annotations

import enum
import uuid

from models import Run
from sqlalchemy import CheckConstraint, ForeignKey, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class ShopBase(DeclarativeBase):
    """The shop's declarative base (its own metadata, apart from the outbox's)."""


class OrderStatus(enum.StrEnum):
    """Where an order stands."""

    PLACED = "placed"
    PAID = "paid"
    CANCELLED = "cancelled"


class Order(ShopBase):
    """An order; ``run_id`` names the outbox run, so the stream, that carries its events."""

    __tablename__ = "orders"
    __table_args__ = (CheckConstraint("total_cents > 0", name="ck_orders_total_positive"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    customer: Mapped[str] = mapped_column(String(200))
    total_cents: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.PLACED.value)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Run.id), unique=True)
