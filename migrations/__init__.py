"""Alembic migrations of the outbox schema (applied by ``outbox db upgrade``)."""
