"""tasks.settings.SETTINGS, the one declaration of every environment variable: the code reads
none that it lacks, it lists none that the code does not read, and its numbers are the
contract's (tests/corpus/environment.py) and what Settings and CelerySettings read."""

from __future__ import annotations

import re

import pytest

from models import ConfigError
from models.db import DEFAULT_DATABASE_URL, database_url
from tasks.settings import (
    CELERY_SECONDS,
    INTEGER_SETTINGS,
    INTEGERS,
    SECONDS,
    SECONDS_SETTINGS,
    SETTINGS,
    TEST_ONLY,
    CelerySettings,
    Number,
    Setting,
    Settings,
)
from tasks.testing.processes import PROJECT_ROOT
from tests.corpus import environment

# Where the project reads its environment: the packages, Celery's settings, the migrations.
SOURCES = ["models", "tasks", "migrations", "celeryconfig.py"]
# A string literal that is a whole variable name (not a prefix such as "OUTBOX_TEST_").
VARIABLE = re.compile(r"""["']((?:OUTBOX|CELERY|PROMETHEUS)_[A-Z0-9_]*[A-Z0-9])["']""")
KINDS = {"integer", "seconds", "flag", "text", "URL", "duration", "choice", "path"}


def _variables_in_the_code() -> dict[str, str]:
    """Every variable named by a string literal in the sources, and one file naming it; in
    tasks/settings.py, only above SETTINGS' own rows (which name every variable)."""
    found: dict[str, str] = {}
    for source in SOURCES:
        path = PROJECT_ROOT / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            text = file.read_text(encoding="utf-8")
            if file == PROJECT_ROOT / "tasks" / "settings.py":
                text = text.split("\ndef _declared()", 1)[0]
            for name in VARIABLE.findall(text):
                found.setdefault(name, str(file.relative_to(PROJECT_ROOT)))
    return found


def test_the_scan_finds_the_variables_read_everywhere_in_the_project() -> None:
    found = _variables_in_the_code()
    assert found["OUTBOX_TEST_DATABASE_URL"] == "tasks/testing/services.py"
    assert found["OUTBOX_KICK_ON_COMMIT"] == "models/producer.py"
    assert "OUTBOX_TEST" not in found  # a prefix, not a variable


def _declared() -> dict[str, Setting]:
    return {setting.variable: setting for setting in SETTINGS}


def test_every_variable_the_code_reads_is_declared_in_settings() -> None:
    missing = {
        name: file for name, file in _variables_in_the_code().items() if name not in _declared()
    }
    assert missing == {}, "declare these in tasks.settings.SETTINGS"


def test_settings_declares_no_variable_that_the_code_does_not_read() -> None:
    read = _variables_in_the_code()
    assert [name for name in _declared() if name not in read] == []


def test_each_variable_is_declared_once_with_a_known_kind_and_one_line_of_text() -> None:
    assert len(SETTINGS) == len(_declared())
    for setting in SETTINGS:
        assert setting.kind in KINDS, setting
        for text in (setting.default, setting.accepts, setting.doc):
            assert text, setting
            assert text.isprintable(), setting
            assert text == text.strip(), setting
        assert len(setting.doc) <= 100, setting


def test_the_settings_only_the_test_suite_reads_are_marked_test_only() -> None:
    marked = {s.variable for s in SETTINGS if s.doc.startswith(TEST_ONLY)}
    assert marked == {"OUTBOX_TEST_DATABASE_URL", "OUTBOX_TEST_REDIS_URL"}


def test_the_numbers_accept_what_the_contract_says_from_one_declaration_each() -> None:
    declared = _declared()
    for name, high in environment.INTEGERS.items():
        assert declared[name].kind == "integer"
        assert declared[name].accepts.startswith(f"1 to {high}"), name
    for name, high in environment.SECONDS.items():
        assert declared[name].kind == "seconds"
        assert declared[name].accepts.startswith(f"above 0, at most {high} seconds"), name
    numbers = [*INTEGERS, *SECONDS, *CELERY_SECONDS]
    assert {n.variable for n in numbers} | {"OUTBOX_MAX_PAYLOAD_BYTES"} == {
        *environment.INTEGERS,
        *environment.SECONDS,
    }
    assert {n.field: (n.variable, n.high) for n in INTEGERS} == INTEGER_SETTINGS
    assert {n.field: (n.variable, n.high) for n in SECONDS} == SECONDS_SETTINGS


def test_the_declared_defaults_are_what_an_empty_environment_gives() -> None:
    declared = _declared()
    settings = Settings(database_url=database_url({"OUTBOX_DATABASE_URL": DEFAULT_DATABASE_URL}))
    for number in [*INTEGERS, *SECONDS]:
        assert float(declared[number.variable].default) == getattr(settings, number.field)
    celery = CelerySettings.from_env({"CELERY_BROKER_URL": "memory://"})
    for number in CELERY_SECONDS:
        assert float(declared[number.variable].default) == getattr(celery, number.field)
    assert declared["OUTBOX_STREAM_PREFIX"].default == settings.stream_prefix
    assert declared["OUTBOX_QUEUED_PREFIX"].default == settings.queued_prefix
    assert declared["OUTBOX_QUEUE"].default == celery.outbox_queue
    assert declared["CELERY_TASK_DEFAULT_QUEUE"].default == celery.default_queue
    assert declared["OUTBOX_LOG_FORMAT"].default == celery.log_format
    assert declared["OUTBOX_MAX_PAYLOAD_BYTES"].default == "1048576"


@pytest.mark.parametrize("number", [*INTEGERS, *SECONDS, *CELERY_SECONDS], ids=lambda n: n.variable)
def test_each_number_is_read_from_its_declared_variable_within_its_declared_bound(
    number: Number,
) -> None:
    owner: type[Settings | CelerySettings] = (
        Settings if number in (*INTEGERS, *SECONDS) else CelerySettings
    )
    env = {"OUTBOX_DATABASE_URL": DEFAULT_DATABASE_URL, "CELERY_BROKER_URL": "memory://"}
    # The lowest value, so that no cross-check (a soft limit below the hard one) is crossed.
    low = "1" if number in INTEGERS else "0.001"
    if number.variable == "CELERY_TASK_TIME_LIMIT":
        low = "241"  # above the default soft limit
    if number.variable == "OUTBOX_REDIS_TIMEOUT":
        low = "0.06"  # above the default kick linger
    read = owner.from_env(env | {number.variable: low})
    assert getattr(read, number.field) == float(low)
    with pytest.raises(ConfigError, match=f"^{number.variable} must be"):
        owner.from_env(env | {number.variable: str(number.high * 2)})
