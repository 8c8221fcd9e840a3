"""The app's settings and names are its own (no services): an application's ``celeryconfig``
first on sys.path is not read, its own settings are layered with ``app.conf.update``, and
``import tasks`` is enough for a kick. Each case runs in a fresh interpreter in a folder of the
application's, as ``celery`` and ``python -c`` put the current directory first on sys.path."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# What Celery's own convention has in an application's folder: a celeryconfig.py of its own.
FOREIGN_CELERYCONFIG = """\
broker_url = "memory://"
task_acks_late = False
task_routes = {}
beat_schedule = {}
"""


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``args`` in ``cwd``, with no OUTBOX_/CELERY_ variables set."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OUTBOX_", "CELERY_", "PYTHONPATH"))
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_applications_own_celeryconfig_first_on_sys_path_is_not_the_apps_settings(
    tmp_path: Path,
) -> None:
    (tmp_path / "celeryconfig.py").write_text(FOREIGN_CELERYCONFIG)
    program = (
        "import json; from tasks import app; c = app.conf; print(json.dumps([c.task_acks_late, "
        "c.task_routes, sorted(c.beat_schedule), c.outbox_log_format, c.broker_url]))"
    )

    done = run(tmp_path, "-c", program)

    assert done.returncode == 0, done.stderr
    acks_late, routes, schedule, log_format, broker = json.loads(done.stdout)
    assert acks_late is True
    assert routes == {"outbox.*": {"queue": "outbox"}}
    assert schedule == ["outbox-dispatch", "outbox-purge"]
    assert log_format == "text"
    assert broker != "memory://"


def test_an_application_layers_its_own_settings_in_a_module_that_updates_the_app(
    tmp_path: Path,
) -> None:
    (tmp_path / "celeryconfig.py").write_text(FOREIGN_CELERYCONFIG)
    (tmp_path / "myapp_celery.py").write_text(
        textwrap.dedent(
            """\
            from tasks import app

            app.conf.update(worker_concurrency=3, task_default_priority=5)
            """
        )
    )

    done = run(tmp_path, "-m", "celery", "-A", "myapp_celery", "report")

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "worker_concurrency: 3" in done.stdout
    assert "task_default_priority: 5" in done.stdout
    assert "task_acks_late: True" in done.stdout  # the outbox's own settings are still there
    assert "'outbox.*'" in done.stdout


def test_import_tasks_alone_is_enough_for_a_kick_and_loads_no_celery_until_the_kick(
    tmp_path: Path,
) -> None:
    program = textwrap.dedent(
        """\
        import sys
        import tasks
        from models import kicks
        before = "celery" in sys.modules
        kicker = kicks.kicker()
        print(before, kicker.__module__)
        """
    )

    done = run(tmp_path, "-c", program)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "tasks.outbox"]


def test_a_kick_without_the_tasks_package_says_to_import_it_or_to_ask_for_no_kick(
    tmp_path: Path,
) -> None:
    program = textwrap.dedent(
        """\
        from models import ConfigError, kicks
        try:
            kicks.kicker()
        except ConfigError as exc:
            print(exc)
        """
    )

    done = run(tmp_path, "-c", program)

    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert "`import tasks` once at start-up" in line
    assert "drop kick=True" in line
    assert "OUTBOX_KICK_ON_COMMIT=0" not in line  # does nothing for an explicit kick=True


def test_a_plain_install_brings_packaging_which_kombus_redis_transport_imports() -> None:
    # kombu/transport/redis.py imports packaging without declaring it: a plain install of the
    # project (no extras) must bring it, or `celery -A tasks worker` fails on a Redis broker.
    requires = importlib.metadata.requires("outbox-publisher") or []

    assert any(r.split(";")[0].startswith("packaging") for r in requires if "extra" not in r)


@pytest.mark.parametrize("name", ["tasks", "models"])
def test_a_package_of_the_applications_that_takes_an_outbox_name_is_named_in_one_line(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")

    done = run(tmp_path, "-c", "import outbox_names; print(outbox_names.problem())")

    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert f"package {name!r} is shadowed by {tmp_path / name / '__init__.py'}" in line
    assert f"rename your {name} package" in line


def test_the_outboxs_own_names_are_not_a_problem(tmp_path: Path) -> None:
    done = run(tmp_path, "-c", "import outbox_names; print(outbox_names.problem())")

    assert done.stdout.strip() == "None", done.stderr
