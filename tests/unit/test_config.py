"""Settings, Celery configuration and the SQL's shape: no services needed."""

from __future__ import annotations

import importlib
import uuid

import pytest

import celeryconfig
from models import ConfigError, InvalidRunId, parse_run_id
from models.db import normalize_url
from models.producer import max_payload_bytes
from tasks import app, sql
from tasks.drain import DrainResult, Fault, Status
from tasks.settings import Settings


def test_settings_default_to_the_local_servers() -> None:
    settings = Settings.from_env({})
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
        [entry] = reloaded.beat_schedule.values()
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
