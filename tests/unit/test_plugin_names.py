"""How outbox processes name themselves to PostgreSQL, and how the guard reads the names back
(no services)."""

from __future__ import annotations

import socket

import pytest

from models import db
from tasks.testing.guard import parse


@pytest.fixture
def role() -> object:
    """Put this process's role back after a test that sets it."""
    saved = db._role
    yield
    db._role = saved


def test_a_name_says_outbox_the_role_the_host_and_the_pid() -> None:
    name = db.application_name("worker", 4321)

    assert name == f"outbox worker host={db.host_label()} pid=4321"
    assert parse(name) == ("worker", db.host_label(), 4321)


def test_a_long_host_name_is_cut_so_that_the_name_fits_postgresql_and_keeps_its_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 80 + ".example.com")

    name = db.application_name("worker", 4194304)

    assert len(name) == db.MAX_APPLICATION_NAME
    assert name.endswith(" pid=4194304")
    assert parse(name) == ("worker", "h" * 32, 4194304)


def test_characters_a_host_name_should_not_have_are_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "dev box=é.local")

    assert db.application_name("app", 7) == "outbox app host=dev_box__ pid=7"


@pytest.mark.parametrize(
    "name",
    ["outbox", "outbox worker", "psql", "outbox robot host=h pid=1", "outbox worker host=h pid="],
)
def test_names_that_are_not_an_outbox_processs_are_not_read_as_one(name: str) -> None:
    assert parse(name) is None


@pytest.mark.usefixtures("role")
def test_a_process_identified_as_beat_names_itself_beat() -> None:
    db.identify_as("beat")

    assert db.application_name().startswith("outbox beat host=")


@pytest.mark.usefixtures("role")
def test_the_outbox_command_names_itself_cli_and_anything_else_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db._role = None
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/outbox", "drain", "--all"])
    assert db.process_role() == "cli"
    monkeypatch.setattr("sys.argv", ["/srv/app/bin/gunicorn"])
    assert db.process_role() == "app"


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role must be one of worker, beat, cli, app"):
        db.identify_as("drainer")
