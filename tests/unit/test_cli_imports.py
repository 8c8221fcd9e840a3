"""`import tasks.cli` loads click and the standard library only.

`outbox --help`, `--version` and `VERB --help` would otherwise wait for SQLAlchemy, Alembic,
the drivers and Celery to load (most of a second) before printing a line. The verbs import
what they need when they run; these tests check that nothing heavy comes back at the top.
"""

from __future__ import annotations

import click

from tasks import cli
from tests.unit.test_imports import modules_after

HEAVY = ("sqlalchemy", "alembic", "redis", "celery", "kombu", "psycopg", "prometheus_client")
HEAVY_OWN = ("models", "tasks.api", "tasks.runtime", "tasks.verify", "tasks.replay")
LIGHT_MODELS = {"models", "models.embedded", "models.errors"}  # no third-party import


def _heavy(modules: set[str]) -> list[str]:
    return sorted(
        name
        for name in modules
        if name.split(".")[0] in HEAVY or name in HEAVY_OWN or name.startswith("models.")
    )


def test_importing_the_cli_loads_no_database_redis_celery_or_project_module() -> None:
    assert _heavy(modules_after("import tasks.cli")) == []


def test_the_help_of_the_group_and_of_every_verb_loads_no_heavy_module() -> None:
    code = (
        "import contextlib, io, tasks.cli\n"
        "for args in ([], ['status'], ['demo'], ['db', 'upgrade'], ['purge'], ['metrics']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        tasks.cli.main(args + ['--help'], standalone_mode=False)\n"
    )
    assert _heavy(modules_after(code)) == []


def test_the_defaults_the_help_shows_are_those_of_the_modules_that_use_them() -> None:
    from tasks import metrics, purge

    assert (cli.PURGE_BATCH_SIZE, cli.PURGE_MAX_BATCH_SIZE) == (
        purge.BATCH_SIZE,
        purge.MAX_BATCH_SIZE,
    )
    assert cli.METRICS_DEFAULT_PORT == metrics.DEFAULT_PORT


def test_the_help_of_a_lazily_loaded_verb_is_the_verbs_own() -> None:
    for name, (_module, _attribute, short_help) in cli.LAZY_COMMANDS.items():
        command = cli.main.get_command(click.Context(cli.main), name)
        assert command is not None, name
        assert (command.help or "").split("\n\n")[0].strip() == short_help, name


def test_outbox_services_loads_no_database_redis_or_celery_module() -> None:
    # `outbox services status` runs before anything else on a newcomer's machine; the
    # models package gives its names on first use, so models.embedded comes alone.
    loaded = modules_after("import tasks.services_cli")
    assert "models.embedded" in loaded
    assert [name for name in _heavy(loaded) if name not in LIGHT_MODELS] == []
