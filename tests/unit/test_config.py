"""Settings, Celery configuration and the SQL's shape: no services needed."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from celery.app.backends import BACKEND_ALIASES
from kombu.transport import TRANSPORT_ALIASES

import celeryconfig
from models import ConfigError, InvalidRunId, parse_run_id
from models.db import normalize_url
from models.errors import InvalidTaskArguments
from models.producer import max_payload_bytes
from tasks import app, drain_run, drain_runs, sql
from tasks.drain import DrainResult, Fault, Status
from tasks.settings import (
    BROKER_SCHEMES,
    RESULT_SCHEMES,
    CelerySettings,
    Settings,
    check_environment,
)
from tasks.testing.processes import PROJECT_ROOT
from tests.corpus import environment


def test_settings_default_to_the_local_servers(tmp_path: Path) -> None:
    # An empty state folder: no embedded server is running there to be preferred.
    settings = Settings.from_env({"OUTBOX_SERVICES_DIR": str(tmp_path)})
    assert settings.database_url.render_as_string() == (
        "postgresql+psycopg://postgres@127.0.0.1:5432/outbox"
    )
    assert (settings.redis_url, settings.stream_prefix) == (
        "redis://127.0.0.1:6379/0",
        "outbox:run:",
    )
    assert (settings.batch_size, settings.max_attempts) == (500, 10)


def test_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "OUTBOX_DATABASE_URL": "postgresql://u@db.example/app",
            "OUTBOX_REDIS_URL": "redis://cache:6379/2",
            "OUTBOX_STREAM_PREFIX": "events:",
            "OUTBOX_BATCH_SIZE": "50",
        }
    )
    assert settings.database_url.drivername == "postgresql+psycopg"
    assert (settings.redis_url, settings.stream_prefix) == ("redis://cache:6379/2", "events:")
    assert settings.batch_size == 50


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OUTBOX_BATCH_SIZE", "0"),
        ("OUTBOX_BATCH_SIZE", "ten"),
        ("OUTBOX_MAX_ATTEMPTS", "-1"),
        ("OUTBOX_KICK_LINGER", "0"),
        ("OUTBOX_KICK_LINGER", "5"),  # the drain's blocking wait must end before the socket's
    ],
)
def test_invalid_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_database_url_for_another_driver_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"postgresql\+psycopg://"):
        normalize_url("postgresql+psycopg2://u@h/db")
    with pytest.raises(ConfigError, match="OUTBOX_DATABASE_URL"):
        normalize_url("::not a url::")


def test_the_payload_limit_defaults_to_one_mebibyte_and_refuses_nonsense() -> None:
    assert max_payload_bytes({}) == 1024 * 1024
    assert max_payload_bytes({"OUTBOX_MAX_PAYLOAD_BYTES": "2048"}) == 2048
    with pytest.raises(ConfigError, match="OUTBOX_MAX_PAYLOAD_BYTES"):
        max_payload_bytes({"OUTBOX_MAX_PAYLOAD_BYTES": "-5"})


def test_run_ids_are_uuids_or_their_string_form_only() -> None:
    value = uuid.uuid4()
    assert parse_run_id(value) is value
    assert parse_run_id(str(value)) == value
    for bad in ("nope", 7, None, value.bytes):
        with pytest.raises(InvalidRunId):
            parse_run_id(bad)


def test_celery_accepts_and_sends_json_only() -> None:
    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"
    assert list(app.conf.accept_content) == ["json"]
    assert list(app.conf.result_accept_content) == ["json"]
    assert app.conf.event_serializer == "json"


def test_celery_acknowledges_late_and_prefetches_one() -> None:
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1


def test_beat_runs_dispatch_at_the_configured_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DISPATCH_INTERVAL", "0.25")
    reloaded = importlib.reload(celeryconfig)
    try:
        entry = reloaded.beat_schedule["outbox-dispatch"]
        assert (entry["task"], entry["schedule"]) == ("outbox.dispatch", 0.25)
    finally:
        monkeypatch.delenv("OUTBOX_DISPATCH_INTERVAL")
        importlib.reload(celeryconfig)
    assert celeryconfig.beat_schedule["outbox-dispatch"]["schedule"] == 1.0


def test_every_task_beat_schedules_is_registered() -> None:
    for entry in celeryconfig.beat_schedule.values():
        assert entry["task"] in app.tasks
    assert {"outbox.drain_run", "outbox.dispatch"} <= set(app.tasks)


def test_the_drain_locks_with_skip_locked_and_takes_the_run_before_its_cursor() -> None:
    assert "FOR KEY SHARE SKIP LOCKED" in sql.LOCK_RUNS.text
    assert "FOR UPDATE SKIP LOCKED" in sql.LOCK_CURSORS.text
    assert "AND published_at IS NULL" in sql.MARK_PUBLISHED.text  # update-if-exists


def test_drain_results_have_the_json_form_the_tasks_return() -> None:
    run_id = uuid.uuid4()
    assert DrainResult(run_id, Status.MORE, 3, 2).as_dict() == {
        "run_id": str(run_id),
        "status": "more",
        "published": 3,
        "already_present": 2,
    }
    refused = DrainResult(run_id, Status.MORE, error="WRONGTYPE ...", fault=Fault.REFUSED)
    assert refused.as_dict() | {"run_id": "-"} == {
        "run_id": "-",
        "status": "more",
        "published": 0,
        "already_present": 0,
        "error": "WRONGTYPE ...",
        "fault": "refused",
    }
    assert {s.value for s in Status} == {"drained", "more", "locked", "missing", "stalled"}


# Every setting, checked at start-up (the corpus: tests/corpus/environment.py)


@pytest.mark.parametrize("case", environment.CASES, ids=lambda case: case.id)
def test_every_invalid_setting_is_refused_with_one_line_naming_it(
    case: environment.EnvCase,
) -> None:
    with pytest.raises(ConfigError) as refused:
        check_environment(case.env)

    message = str(refused.value)
    assert message == case.message
    assert "\n" not in message
    assert len(message) < 300
    assert "s3cret" not in message  # a URL is never quoted, only its scheme


def test_the_defaults_and_plain_values_of_every_setting_are_accepted() -> None:
    check_environment({})
    check_environment(
        {
            "OUTBOX_DATABASE_URL": "postgresql://app:s3cret@db.example:6432/app?sslmode=require",
            "OUTBOX_REDIS_URL": "rediss://:s3cret@cache.example:6380/2",
            "CELERY_BROKER_URL": "amqp://guest:guest@mq1//;amqp://guest:guest@mq2//",
            "CELERY_RESULT_BACKEND": "db+postgresql://app@db.example/results",
            "CELERY_TASK_DEFAULT_QUEUE": "outbox events",
            "OUTBOX_KICK_ON_COMMIT": " Yes ",
            "OUTBOX_BATCH_SIZE": "250",
            "OUTBOX_KICK_PAUSE": "+.5",
            "OUTBOX_REDIS_TIMEOUT": "1e1",
            # AMQP redelivers nothing after a visibility timeout: no cross-check then.
            "CELERY_VISIBILITY_TIMEOUT": "1",
        }
    )


def _range_message(name: str) -> str:
    if name in environment.INTEGERS:
        return f"{name} must be an integer from 1 to {environment.INTEGERS[name]}"
    return f"{name} must be a number of seconds above 0 and at most {environment.SECONDS[name]}"


@pytest.mark.parametrize("name", [*environment.INTEGERS, *environment.SECONDS])
def test_every_number_is_accepted_at_both_ends_of_its_range(name: str) -> None:
    high = environment.INTEGERS.get(name) or environment.SECONDS[name]
    low = "1" if name in environment.INTEGERS else "0.001"
    for value in (low, str(high)):
        refused = ""
        try:
            check_environment({name: value})
        except ConfigError as exc:
            refused = str(exc)
        # A value at an end may clash with another setting's default (a soft time limit of a
        # day with the default hard one): that is a cross-check, not the range.
        assert not refused.startswith(_range_message(name)), refused


def test_the_visibility_timeout_is_checked_only_for_brokers_that_redeliver_by_it() -> None:
    with pytest.raises(ConfigError, match="CELERY_VISIBILITY_TIMEOUT"):
        CelerySettings.from_env({"CELERY_BROKER_URL": "sqs://", "CELERY_TASK_TIME_LIMIT": "900"})
    # The Redis transport's ack emulation is off, and with it the only reader of the setting.
    for broker in ("amqp://h//", "pyamqp://h//", "redis://h/0", "rediss://h/0", "sentinel://h"):
        limits = CelerySettings.from_env(
            {"CELERY_BROKER_URL": broker, "CELERY_TASK_TIME_LIMIT": "900"}
        )
        assert limits.time_limit == 900


def test_the_broker_defaults_to_the_sinks_redis(tmp_path: Path) -> None:
    sink = "redis://:s3cret@cache.example:6379/3"
    assert CelerySettings.from_env({"OUTBOX_REDIS_URL": sink}).broker_url == sink
    nothing_embedded = {"OUTBOX_SERVICES_DIR": str(tmp_path)}
    assert CelerySettings.from_env(nothing_embedded).broker_url == "redis://127.0.0.1:6379/0"


def test_the_accepted_schemes_are_the_transports_and_backends_celery_knows() -> None:
    assert set(TRANSPORT_ALIASES) == BROKER_SCHEMES
    assert set(BACKEND_ALIASES) == RESULT_SCHEMES


def test_the_configuration_page_says_what_each_number_accepts() -> None:
    spec = importlib.util.spec_from_file_location("docs_hooks", PROJECT_ROOT / "docs/hooks.py")
    assert spec is not None
    assert spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.render((PROJECT_ROOT / "docs" / "configuration.md").read_text())
    rows = {
        name: accepts
        for name, _, accepts in re.findall(r"^\| `(\w+)` \| (\w+) \| (.*) \|$", page, re.MULTILINE)
    }
    for name, high in environment.INTEGERS.items():
        assert rows[name].startswith(f"1 to {high}"), name
    for name, high in environment.SECONDS.items():
        assert rows[name].startswith(f"above 0, at most {high} seconds"), name


def test_an_application_that_imports_the_app_gets_a_config_error_not_an_exit() -> None:
    # Only `celery -A tasks ...` stops the process: an application sees the exception.
    program = (
        "from models import ConfigError\n"
        "from tasks import app\n"
        "try:\n"
        "    app.conf.task_time_limit\n"
        "except ConfigError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "CELERY_BROKER_URL": "nonsense"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.startswith("refused: CELERY_BROKER_URL is not a valid broker URL")


# Task arguments, checked before a task touches anything (tests/e2e/test_corpus_tasks.py sends
# them to a real worker)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: drain_run(),
            "outbox.drain_run takes (run_id), got 0 positional and 0 keyword arguments: "
            "missing a required argument: 'run_id'",
            id="drain_run()",
        ),
        pytest.param(
            lambda: drain_run("a", "b"),
            "outbox.drain_run takes (run_id), got 2 positional and 0 keyword arguments: "
            "too many positional arguments",
            id="drain_run(a, b)",
        ),
        pytest.param(
            lambda: drain_runs(run_ids=[], x="y" * 10_000),
            "outbox.drain_runs takes (run_ids), got 0 positional and 2 keyword arguments: "
            "got an unexpected keyword argument 'x'",
            id="drain_runs(run_ids=[], x=...)",
        ),
        pytest.param(
            lambda: drain_runs(str(uuid.UUID(int=1))),
            "outbox.drain_runs takes a list of run ids, got '00000000-0000-0000-0000-000000000001'",
            id="drain_runs(a string)",
        ),
        pytest.param(
            lambda: drain_runs(["x"] * 10_001),
            "outbox.drain_runs takes at most 10000 run ids, got 10001",
            id="drain_runs(10001 ids)",
        ),
    ],
)
def test_wrong_task_arguments_fail_at_once_with_one_line_naming_the_task(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(InvalidTaskArguments) as refused:
        call()
    assert str(refused.value) == message


def test_bad_input_is_what_the_tasks_expect_so_the_worker_logs_it_without_a_traceback() -> None:
    for name in ("outbox.drain_run", "outbox.drain_runs", "outbox.drain_kicked", "outbox.dispatch"):
        assert set(app.tasks[name].throws) == {InvalidTaskArguments, InvalidRunId}
