"""Retention without services: durations, the setting, the beat entry, and the purge loop over
an in-memory store (tests/integration/test_purge.py runs the same rules against PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

import celeryconfig
from models import ConfigError
from models.errors import InvalidTaskArguments
from tasks import app, sql
from tasks import purge as retention
from tasks.errors import StoreUnavailable
from tasks.outbox import purge as purge_task
from tasks.settings import Settings

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


class CountingStore:
    """Purgeable events as a count, deleted a batch at a time; may become unavailable."""

    def __init__(self, purgeable: int, *, fail_at_batch: int | None = None) -> None:
        self.purgeable = purgeable
        self.fail_at_batch = fail_at_batch
        self.limits: list[int] = []  # the limit of each batch asked for

    def cutoff(self, older_than: float) -> dt.datetime:
        if self.fail_at_batch == 0:
            raise StoreUnavailable("PostgreSQL unavailable: connection refused")
        return NOW - dt.timedelta(seconds=older_than)

    def delete_batch(self, cutoff: dt.datetime, limit: int) -> int:
        self.limits.append(limit)
        if len(self.limits) == self.fail_at_batch:
            raise StoreUnavailable("PostgreSQL unavailable: server closed the connection")
        deleted = min(limit, self.purgeable)
        self.purgeable -= deleted
        return deleted

    def count(self, cutoff: dt.datetime) -> int:
        return self.purgeable


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("15m", 900),
        ("12h", 43200),
        ("7d", 604800),
        ("1.5h", 5400),
        ("36500d", 36500 * 86400),
    ],
)
def test_a_duration_is_seconds_or_a_number_with_s_m_h_or_d(text: str, seconds: float) -> None:
    assert retention.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "such as 90, 30s, 15m, 12h or 7d"),
        ("7x", "such as 90, 30s, 15m, 12h or 7d"),
        ("7D", "such as 90, 30s, 15m, 12h or 7d"),
        ("7 d", "such as 90, 30s, 15m, 12h or 7d"),
        (" 7d ", "such as 90, 30s, 15m, 12h or 7d"),  # the documented forms only, as numbers
        ("-5", "such as 90, 30s, 15m, 12h or 7d"),
        ("1e3", "such as 90, 30s, 15m, 12h or 7d"),
        ("nan", "such as 90, 30s, 15m, 12h or 7d"),
        ("inf", "such as 90, 30s, 15m, 12h or 7d"),
        ("\u0667d", "such as 90, 30s, 15m, 12h or 7d"),  # an Arabic-Indic seven
        ("7d" * 100, "such as 90, 30s, 15m, 12h or 7d"),
        ("0", "longer than zero"),
        ("0.0h", "longer than zero"),
        ("36501d", "at most 36500d"),
        ("9" * 400, "at most 36500d"),
    ],
)
def test_anything_else_is_not_a_duration_and_the_message_says_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        retention.parse_duration(text)
    assert len(str(raised.value)) < 200  # a huge value is quoted in part


def test_the_retention_defaults_to_seven_days_and_is_read_as_a_duration() -> None:
    assert Settings.from_env({}).retention == 7 * 86400
    assert Settings.from_env({"OUTBOX_RETENTION": "12h"}).retention == 43200
    assert Settings.from_env({"OUTBOX_RETENTION": "3600"}).retention == 3600


@pytest.mark.parametrize("value", ["a week", "0", "-1d", "7x"])
def test_an_invalid_retention_is_refused_with_one_line_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^OUTBOX_RETENTION must be a duration") as raised:
        Settings.from_env({"OUTBOX_RETENTION": value})
    assert "\n" not in str(raised.value)


def test_beat_runs_the_purge_every_minute_and_every_task_it_schedules_is_registered() -> None:
    entries = {entry["task"]: entry for entry in celeryconfig.beat_schedule.values()}
    assert entries["outbox.purge"]["schedule"] == 60.0
    assert entries["outbox.purge"]["options"] == {"expires": 60.0}
    assert set(entries) <= set(app.tasks)


def test_the_purge_task_takes_no_arguments_and_refuses_any_at_once_with_one_line() -> None:
    with pytest.raises(InvalidTaskArguments) as refused:
        purge_task("7d")
    assert str(refused.value) == (
        "outbox.purge takes no arguments, got 1 positional and 0 keyword arguments: "
        "too many positional arguments"
    )


def test_a_purge_stops_at_its_first_short_batch() -> None:
    store = CountingStore(purgeable=10)

    result = retention.purge(store, NOW, batch_size=4, max_batches=5)

    assert (result.deleted, result.batches, result.more, result.error) == (10, 3, False, None)
    assert store.limits == [4, 4, 4]


def test_a_purge_stops_after_max_batches_and_the_next_one_goes_on() -> None:
    store = CountingStore(purgeable=13)

    first = retention.purge(store, NOW, batch_size=3, max_batches=2)
    second = retention.purge(store, NOW, batch_size=3, max_batches=2)
    third = retention.purge(store, NOW, batch_size=3, max_batches=2)

    assert [(r.deleted, r.batches, r.more) for r in (first, second, third)] == [
        (6, 2, True),
        (6, 2, True),
        (1, 1, False),
    ]
    assert store.purgeable == 0


def test_a_purge_with_nothing_to_delete_takes_one_empty_batch() -> None:
    result = retention.purge(CountingStore(purgeable=0), NOW)
    assert (result.deleted, result.batches, result.more) == (0, 1, False)


def test_a_database_outage_ends_the_purge_with_what_it_deleted_before() -> None:
    store = CountingStore(purgeable=10, fail_at_batch=3)

    result = retention.purge(store, NOW, batch_size=2, max_batches=5)

    assert (result.deleted, result.batches, result.more) == (4, 2, True)
    assert result.error == "PostgreSQL unavailable: server closed the connection"
    assert store.purgeable == 6


def test_the_scheduled_purge_logs_an_outage_and_reports_it_instead_of_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = CountingStore(purgeable=10, fail_at_batch=0)

    with caplog.at_level(logging.WARNING, logger="tasks.purge"):
        result = retention.purge_older_than(store, 3600)

    assert result.as_dict() == {
        "deleted": 0,
        "batches": 0,
        "more": True,
        "cutoff": None,
        "unavailable": "database",
        "error": "PostgreSQL unavailable: connection refused",
    }
    assert [r.getMessage() for r in caplog.records] == [
        "purge stopped, the next run goes on: PostgreSQL unavailable: connection refused"
    ]


def test_the_scheduled_purge_deletes_what_is_older_than_the_retention_and_returns_json() -> None:
    store = CountingStore(purgeable=5)

    result = retention.purge_older_than(store, 7 * 86400, batch_size=2, max_batches=2)

    assert result.as_dict() == {
        "deleted": 4,
        "batches": 2,
        "more": True,
        "cutoff": "2026-11-24T12:00:00+00:00",
    }


def test_the_purge_deletes_published_rows_below_the_cursor_by_key_and_skips_locked_ones() -> None:
    batch = " ".join(sql.PURGE_BATCH.text.split())
    assert "e.published_at < :cutoff" in batch
    assert "e.seq < (SELECT o.next_seq FROM run_outbox AS o WHERE o.run_id = e.run_id)" in batch
    assert "ORDER BY e.published_at LIMIT :batch_size FOR UPDATE OF e SKIP LOCKED" in batch
    assert "DELETE FROM run_events WHERE id = ANY(ARRAY(" in batch
    # It locks events only: never a runs or run_outbox row, which producers and drains hold.
    assert batch.count("FOR ") == 1
