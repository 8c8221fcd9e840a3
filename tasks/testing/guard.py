"""The guard against foreign drainers: who else, attached to a test's database, could drain it.

A worker or beat left running by an earlier test, or a drain started from a terminal, takes
rows a test has seeded before the test drains them, and the test then sees them vanish. Every
outbox process names itself to PostgreSQL (``models.db.application_name``: ``outbox <role>
host=<host> pid=<pid>``), so one query on ``pg_stat_activity`` finds them before a step-wise
drain, and the test fails at once, naming the culprit, instead of later and obscurely.

Not foreign: this process's own connections, and processes the test started itself (their
process groups are allowed, e.g. the plugin's ``outbox_worker``). A drainer that has not
connected yet (a worker that has run no task) cannot be seen; one that has drained keeps its
pooled connection, and stays visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
from collections.abc import Callable, Iterable

from sqlalchemy import Engine, text

from models.db import APPLICATION_NAME_PREFIX, ROLES, host_label

# The sessions of the current database that name themselves as outbox processes.
DRAINER_SESSIONS = text(
    "SELECT pid, application_name, host(client_addr) AS client, backend_start"
    " FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND application_name LIKE :pattern"
)
_NAME = re.compile(
    rf"{APPLICATION_NAME_PREFIX} (?P<role>{'|'.join(ROLES)}) host=(?P<host>\S*) pid=(?P<pid>\d+)"
)


@dataclasses.dataclass(frozen=True)
class DrainerSession:
    """A database session of an outbox process, as PostgreSQL shows it."""

    application_name: str
    role: str
    host: str
    pid: int  # the process's own pid, on ``host``
    backend_pid: int  # the PostgreSQL server process serving the session
    client: str | None  # the client's address; None over a Unix socket
    since: dt.datetime | None

    def describe(self) -> str:
        """One line naming the session: application name, host, pid, address, since when."""
        where = f"from {self.client}" if self.client else "over a local socket"
        since = f", connected since {self.since:%H:%M:%S}" if self.since else ""
        return (
            f"{self.application_name!r} (a {self.role} process: host {self.host}, pid "
            f"{self.pid}, {where}{since})"
        )


def parse(application_name: str) -> tuple[str, str, int] | None:
    """The (role, host, pid) an outbox application_name names, or None for any other name."""
    found = _NAME.fullmatch(application_name)
    if found is None:
        return None
    return found["role"], found["host"], int(found["pid"])


class ForeignDrainer(AssertionError):
    """An outbox process outside the test is attached to its database."""


class Guard:
    """Finds outbox processes attached to one database other than this one and its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._allowed: list[Callable[[], Iterable[int]]] = []

    def allow(self, process_groups: Callable[[], Iterable[int]]) -> None:
        """Treat the processes of the groups ``process_groups()`` names when asked (on this
        host) as the test's own: a worker the test started, and its pool children."""
        self._allowed.append(process_groups)

    def sessions(self) -> list[DrainerSession]:
        """Every session of the database that names itself as an outbox process."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            rows = conn.execute(DRAINER_SESSIONS, {"pattern": f"{APPLICATION_NAME_PREFIX} %"})
            found = []
            for row in rows:
                named = parse(row.application_name)
                if named is not None:
                    role, host, pid = named
                    found.append(
                        DrainerSession(
                            row.application_name, role, host, pid, row.pid, row.client,
                            row.backend_start,
                        )
                    )  # fmt: skip
            return found

    def foreign(self) -> list[DrainerSession]:
        """The sessions of outbox processes that are neither this one nor the test's own."""
        return [s for s in self.sessions() if not self._ours(s)]

    def _ours(self, session: DrainerSession) -> bool:
        # The name carries the host cut to fit 63 characters: a prefix of ours means this host.
        if not session.host or not host_label().startswith(session.host):
            return False
        if session.pid == os.getpid():
            return True
        allowed = {group for groups in self._allowed for group in groups()}
        return bool(allowed) and _group_of(session.pid) in allowed

    def problem(self) -> str | None:
        """None when no foreign outbox process is attached; else the line naming them all."""
        foreign = self.foreign()
        return message(self.engine.url.database, foreign) if foreign else None

    def check(self) -> None:
        """Raise ForeignDrainer naming every foreign outbox process attached to the database."""
        problem = self.problem()
        if problem is not None:
            raise ForeignDrainer(problem)


def message(database: str | None, sessions: Iterable[DrainerSession]) -> str:
    """The failure's one line: which database, who is attached, what to do."""
    named = "; ".join(session.describe() for session in sessions)
    return (
        f"a drainer outside this test is attached to its database {database}: {named}. It can "
        "publish the rows this test seeds before the test drains them. Stop it (a worker or "
        "beat left running by an earlier test, or a drain started in a terminal?)"
    )


def _group_of(pid: int) -> int | None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        return os.getpgid(pid)
    return None
