"""Retention: an index of published events by publication time, for the purge.

Built CONCURRENTLY, outside the migration's transaction: a plain CREATE INDEX would block
producers' inserts and drains' updates for as long as it reads the whole history. If the
build is interrupted, PostgreSQL leaves an invalid index behind; drop it
(``DROP INDEX CONCURRENTLY ix_run_events_published_at``) and upgrade again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_run_events_published_at",
            "run_events",
            ["published_at"],
            postgresql_where=sa.text("published_at IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_run_events_published_at", table_name="run_events", postgresql_concurrently=True
        )
