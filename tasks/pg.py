"""How the drain side talks to PostgreSQL: one translation of the driver's connection errors
into StoreUnavailable, and the two ways its statements run (alone, or in a transaction).

The SQL store, the verify ledger and the purge store all go through here, so a database that
went away reads the same, ``PostgreSQL unavailable: ...``, whichever of them met it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from tasks.errors import StoreUnavailable

SessionFactory = Callable[[], Session]

# What the driver raises for a server that is down, restarting, or cut off mid-statement.
CONNECTION_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError)


def unavailable(exc: sa_exc.DBAPIError) -> StoreUnavailable:
    """The project's error for a driver's connection error."""
    return StoreUnavailable(f"PostgreSQL unavailable: {str(exc.orig).strip()}")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn the driver's connection errors raised inside the block into StoreUnavailable."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise unavailable(exc) from exc


@contextlib.contextmanager
def autocommit(session_factory: SessionFactory) -> Iterator[Connection]:
    """A connection whose every statement is its own transaction.

    A lone statement needs no transaction: autocommit spares the BEGIN and ROLLBACK, and the
    statement's row locks end with it.
    """
    with translated(), session_factory() as session:
        yield session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


@contextlib.contextmanager
def transaction(session_factory: SessionFactory) -> Iterator[Session]:
    """A session in one transaction: committed when the block ends, rolled back on an error."""
    with translated(), session_factory() as session, session.begin():
        yield session
