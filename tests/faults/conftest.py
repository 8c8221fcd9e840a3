"""The fault-injection suite's harness: its size, its scenarios' deployments, its report.

``pytest tests/faults`` runs every scenario at the bounded size (part of the plain `pytest`
run, a few minutes in all); ``pytest tests/faults --fault-size=large`` runs the large size and
writes ``docs/reliability.md`` from the figures when it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import URL
from sqlalchemy.orm import Session, sessionmaker

from models.db import libpq_url
from tasks.testing.workers import Workers
from tests.e2e.test_security import documented_grants
from tests.faults import report
from tests.faults.harness import Scenario, WorkerRole

SIZES = ("bounded", "large")
FIGURES = pytest.StashKey[list[report.Figures]]()
OUTCOMES = pytest.StashKey[dict[str, bool]]()  # each scenario's name: whether it passed
HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-size",
        choices=SIZES,
        default="bounded",
        help="size of the fault-injection scenarios in tests/faults: bounded (the default, "
        "part of every run) or large (writes docs/reliability.md)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = []


# pytest-timeout's limit per scenario: the project's 120 s is for one test of the other layers.
TIMEOUTS = {"bounded": 240, "large": 1800}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.timeout(TIMEOUTS[size_of(config)]))


def size_of(config: pytest.Config) -> str:
    """The size asked for (bounded when the option was not registered in time)."""
    return str(config.getoption("fault_size", default="bounded"))


@pytest.fixture
def fault_size(request: pytest.FixtureRequest) -> str:
    """``bounded`` or ``large``."""
    return size_of(request.config)


@pytest.fixture
def record_figures(request: pytest.FixtureRequest) -> list[report.Figures]:
    """Where a scenario leaves its row of the table."""
    return request.config.stash[FIGURES]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash.get(FIGURES, [])
    if rows:
        terminalreporter.section("reliability under faults")
        terminalreporter.write_line(report.table(rows))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    outcome = yield
    if HERE in Path(str(item.path)).parents and outcome.when == "call":
        item.config.stash.setdefault(OUTCOMES, {})[item.name] = outcome.passed
    return outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rows = session.config.stash.get(FIGURES, [])
    if rows and size_of(session.config) == "large":
        outcomes = session.config.stash.get(OUTCOMES, {})
        failed = [name for name, passed in outcomes.items() if not passed]
        path = report.write_page(rows, "large", report.outcome(rows, len(outcomes), failed))
        print(f"\nwrote {path} ({len(rows)} scenarios)")


@pytest.fixture
def worker_role(db_url: URL) -> Iterator[WorkerRole]:
    """A PostgreSQL role of this scenario's own with the worker's privileges of docs/security.md's
    least-privilege snippet, on this scenario's database only; dropped afterwards."""
    suffix = uuid.uuid4().hex[:12]
    name, producer = f"outbox_test_worker_{suffix}", f"outbox_test_unused_{suffix}"
    grants = [
        g for g in documented_grants(str(db_url.database), name, producer) if producer not in g
    ]
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(name)))
        try:
            for statement in grants:
                conn.execute(statement.encode())
            application = f"outbox-faults-{suffix}"
            url = db_url.set(username=name, query={"application_name": application})
            yield WorkerRole(name, url, application)
        finally:
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(name)))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest,
    db_url: URL,
    worker_role: WorkerRole,
    Session: sessionmaker[Session],
    celery_processes: Workers,
    key_space: str,
    tmp_path: Path,
) -> Iterator[Scenario]:
    """The scenario's deployment; everything it started is stopped afterwards, its workers
    (as the restricted role) before the role is dropped."""
    deployment = Scenario(
        request.node.name,
        Session=Session,
        database=str(db_url.database),
        role=worker_role,
        celery=celery_processes,
        prefix=f"{key_space}run:",
        workdir=tmp_path,
    )
    try:
        yield deployment
    finally:
        deployment.close()
