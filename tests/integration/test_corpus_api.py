"""The Python API against the bad-input corpus (tests/corpus/api.py), on real PostgreSQL and
Redis: every case ends in its clear, short error or its status, and writes nothing."""

from __future__ import annotations

import uuid

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Run, RunEvent, RunOutbox
from tasks.redis_sink import RedisStreamSink
from tasks.settings import Settings
from tests.corpus.api import CASES, Api, ApiCase
from tests.helpers import seed

MAX_MESSAGE_CHARS = 300  # an error never echoes a huge input

RunState = tuple[str, int, int, str | None, int, int]


@pytest.fixture
def api(Session: sessionmaker[Session], publisher: RedisStreamSink, settings: Settings) -> Api:
    [run] = seed(Session, events=2)
    return Api(Session, publisher, settings, run)


def _state(api: Api, client: redis.Redis) -> tuple[dict[uuid.UUID, RunState], list[bytes]]:
    """Every run's cursor and events, and the streams under this test's prefix."""
    published = func.count(RunEvent.published_at)
    query = (
        select(
            Run.id,
            RunOutbox.status,
            RunOutbox.attempts,
            RunOutbox.next_seq,
            RunOutbox.last_error,
            func.count(RunEvent.id),
            published,
        )
        .join(RunOutbox, RunOutbox.run_id == Run.id)
        .outerjoin(RunEvent, RunEvent.run_id == Run.id)
        .group_by(Run.id, RunOutbox.run_id)
    )
    with api.Session() as session:
        runs = {row[0]: tuple(row[1:]) for row in session.execute(query)}
    streams = sorted(client.scan_iter(match=f"{api.settings.stream_prefix}*"))
    return runs, streams


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_python_api_ends_bad_input_in_a_clear_error_or_status_and_writes_nothing(
    api: Api, redis_client: redis.Redis, case: ApiCase
) -> None:
    before_runs, before_streams = _state(api, redis_client)

    if case.error is None:
        assert case.returns is not None
        result = case.call(api)
        assert case.returns(api, result), result
    else:
        with pytest.raises(Exception) as raised:  # noqa: PT011 - the exact type is checked
            case.call(api)
        assert type(raised.value) is case.error, repr(raised.value)[:500]
        message = str(raised.value)
        assert case.message in message
        assert "\n" not in message
        assert len(message) <= MAX_MESSAGE_CHARS

    after_runs, after_streams = _state(api, redis_client)
    assert after_streams == before_streams == []
    assert {r: after_runs[r] for r in before_runs} == before_runs
    new_runs = set(after_runs) - set(before_runs)
    assert len(new_runs) == case.runs_created
    assert all(after_runs[r][4] == 0 for r in new_runs)  # a run the race created, no events
