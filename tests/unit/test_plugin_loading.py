"""The pytest plugin is installed with the package and loading it has no side effects
(no services: the inner runs use no fixture that reaches a server)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_as_the_pytest11_entry_point_outbox() -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "outbox"]

    # A module whose name no application has: it checks `tasks` and `models` before it loads
    # tasks.testing.plugin (tests/e2e/test_names_install.py).
    assert entry.value == "outbox_pytest_plugin"


@pytest.mark.parametrize("module", ["tasks.testing.plugin", "outbox_pytest_plugin"])
def test_importing_the_plugin_loads_neither_celery_nor_sqlalchemy_nor_redis(module: str) -> None:
    program = (
        f"import sys, {module}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'celery', 'kombu', 'sqlalchemy', 'redis', 'psycopg', 'models'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )

    assert done.stdout.strip() == "[]"


def test_a_suite_that_uses_no_outbox_fixture_runs_untouched_by_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import os, sys

        def test_nothing_was_loaded_configured_or_marked(request):
            assert request.config.pluginmanager.has_plugin("outbox")
            assert not {"celery", "sqlalchemy", "redis", "models"} & set(sys.modules)
            assert request.node.get_closest_marker("services") is None
            assert os.environ.get("PLUGIN_PROBE") == "kept"
        """
    )
    monkeypatch.setenv("PLUGIN_PROBE", "kept")

    result = pytester.runpytest_subprocess("-p", "no:randomly")

    result.assert_outcomes(passed=1)


def test_missing_services_stop_the_run_with_one_message_saying_how_and_skip_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    pytester.makepyfile(
        """
        def test_one(outbox_database):
            pass

        def test_two(outbox_drain):
            pass
        """
    )

    result = pytester.runpytest_subprocess("-p", "no:randomly")

    # Not 3, pytest's code for an internal error: the environment lacks a service.
    assert result.ret == pytest.ExitCode.USAGE_ERROR == 4
    assert "skipped" not in result.stdout.str()
    [line] = [
        line for line in result.stderr.lines + result.stdout.lines if "need PostgreSQL" in line
    ]
    assert "(OUTBOX_TEST_DATABASE_URL: connection failed:" in line
    assert "port 1 failed" in line
