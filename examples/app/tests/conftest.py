"""The shop's test setup: nothing but the outbox plugin's fixtures and the shop's own tables.

The plugin (installed with outbox-publisher, loaded automatically) gives each test a migrated
database of its own, a Redis key space of its own, and the fixtures used here.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, orm

from shop import ShopBase


@pytest.fixture
def Session(
    outbox_engine: Engine,
    outbox_session_factory: orm.sessionmaker[orm.Session],
    outbox_eager: object,
) -> orm.sessionmaker[orm.Session]:
    """Sessions on this test's database, with the shop's tables created in it.

    With the outbox eager (``outbox_eager``): the kicks the shop asks for on commit are
    recorded, never sent, so whatever a test commits waits for the test to drain it.
    """
    ShopBase.metadata.create_all(outbox_engine)
    return outbox_session_factory
