"""The Alembic migrations create exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from models import Base


def test_the_migrated_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_pending_work_has_a_partial_index_that_excludes_published_history(engine: Engine) -> None:
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("run_events")}
    pending = indexes["ix_run_events_pending"]
    assert pending["column_names"] == ["run_id", "seq"]
    assert pending["dialect_options"]["postgresql_where"] == "(published_at IS NULL)"


def test_deleting_a_run_cascades_to_its_events_and_cursor(engine: Engine) -> None:
    foreign_keys = {
        table: inspect(engine).get_foreign_keys(table) for table in ("run_events", "run_outbox")
    }
    for keys in foreign_keys.values():
        [key] = keys
        assert (key["referred_table"], key["options"].get("ondelete")) == ("runs", "CASCADE")
