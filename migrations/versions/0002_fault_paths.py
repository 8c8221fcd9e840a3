"""Fault paths: a retry time per run, and the sink's health shared by every worker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("run_outbox", sa.Column("retry_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.create_table(
        "sink_health",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("down_since", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("probes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_probe_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("id = 1", name="one_row"),
        sa.PrimaryKeyConstraint("id", name="pk_sink_health"),
    )
    op.execute("INSERT INTO sink_health (id) VALUES (1)")


def downgrade() -> None:
    op.drop_table("sink_health")
    op.drop_column("run_outbox", "retry_at")
