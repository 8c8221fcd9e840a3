"""Engines under a forking pool: a child never uses the connections its parent pooled."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest
from sqlalchemy import URL, text

from models.db import dispose_engines, get_engine


def _child_backend_pid(url: str, results: multiprocessing.Queue[int]) -> None:
    with get_engine(url).connect() as conn:
        results.put(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.fixture
def cached_engines() -> Iterator[None]:
    yield
    dispose_engines()


def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_intact(
    db_url: URL, cached_engines: None
) -> None:
    url = db_url.render_as_string(hide_password=False)
    engine = get_engine(url)
    with engine.connect() as conn:  # now pooled in the parent
        parent_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

    context = multiprocessing.get_context("fork")  # what Celery's prefork pool does
    results: multiprocessing.Queue[int] = context.Queue()
    child = context.Process(target=_child_backend_pid, args=(url, results))
    child.start()
    child_pid = results.get(timeout=30)
    child.join(timeout=30)

    assert child.exitcode == 0
    assert child_pid != parent_pid
    with engine.connect() as conn:  # the parent's pooled connection still works
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == parent_pid
