"""The outbox tables: runs (with the producers' seq counter), their events, and the drain cursor.

The producers' counter (``runs.last_seq``) and the drain's cursor (``run_outbox.next_seq``) live
in different rows on purpose: producers lock the first, drains lock the second, so neither ever
waits for the other.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base


class OutboxStatus(enum.StrEnum):
    """Whether dispatch drains a run (``active``) or leaves it parked for an operator."""

    ACTIVE = "active"
    STALLED = "stalled"


class Run(Base):
    """A long-lived unit of work whose events are published to one stream, in seq order."""

    __tablename__ = "runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    # Producers' counter: the seq of the run's latest event. Locked by append_event only.
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"), default=0)

    outbox: Mapped[RunOutbox] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )


class RunEvent(Base):
    """One event of a run; ``published_at`` stays NULL until it is in the run's stream."""

    __tablename__ = "run_events"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        CheckConstraint("seq >= 1", name="seq_positive"),
        # Pending work only: entries leave this index once published, so finding the runs that
        # need a drain costs the same with or without millions of published events.
        Index(
            "ix_run_events_pending",
            "run_id",
            "seq",
            postgresql_where=text("published_at IS NULL"),
        ),
        # Published history, oldest first: the purge (tasks.purge) takes each batch from the
        # front of this index, never scanning the table, however long the history.
        Index(
            "ix_run_events_published_at",
            "published_at",
            postgresql_where=text("published_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    payload: Mapped[Any] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    published_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class RunOutbox(Base):
    """The drain cursor of one run, plus what the drain records about failures."""

    __tablename__ = "run_outbox"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'stalled')", name="status_known"),
        CheckConstraint("next_seq >= 1", name="next_seq_positive"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    # The seq of the next event to publish; everything below it is in the stream.
    next_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("1"), default=1)
    status: Mapped[str] = mapped_column(
        String(16), server_default=OutboxStatus.ACTIVE.value, default=OutboxStatus.ACTIVE.value
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # A refused run is not dispatched again before this (a jittered, growing delay).
    retry_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_published_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    run: Mapped[Run] = relationship(back_populates="outbox")


class SinkHealth(Base):
    """One row: whether the workers found the sink unavailable, and when dispatch checks again.

    Shared by every worker, so an outage is logged once when it starts, once per check, and
    once when it ends, however many processes meet it.
    """

    __tablename__ = "sink_health"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    down_since: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    probes: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    next_probe_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
