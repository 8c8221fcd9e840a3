"""The model-based exactly-once test (tests/statemachine/machine.py), in both worlds.

On the in-memory store and sink it runs many examples in the normal suite; on PostgreSQL and
Redis fewer, since each step is a few round trips. ``OUTBOX_STATEMACHINE_EXAMPLES=N`` sets
the number of examples for both, to run thousands when the drain core changes:

    OUTBOX_STATEMACHINE_EXAMPLES=5000 pytest tests/statemachine -p no:randomly
"""

from __future__ import annotations

import os
import uuid

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy.orm import Session, sessionmaker

from tests.statemachine.machine import ExactlyOnce
from tests.statemachine.worlds import MemoryWorld, SqlWorld, World


def _examples(default: int) -> int:
    return int(os.environ.get("OUTBOX_STATEMACHINE_EXAMPLES", default))


def _settings(examples: int) -> settings:
    return settings(
        max_examples=_examples(examples),
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.mark.timeout(900)  # shrinking a failure replays many examples
def test_every_committed_event_is_published_exactly_once_in_memory() -> None:
    class InMemory(ExactlyOnce):
        def make_world(self) -> World:
            return MemoryWorld()

    run_state_machine_as_test(InMemory, settings=_settings(500))


@pytest.mark.services
@pytest.mark.timeout(900)  # shrinking a failure replays many examples, each on the servers
def test_every_committed_event_is_published_exactly_once_on_postgresql_and_redis(
    Session: sessionmaker[Session], redis_client: redis.Redis, key_space: str
) -> None:
    class OnServers(ExactlyOnce):
        def make_world(self) -> World:
            return SqlWorld(Session, redis_client, f"{key_space}sm:{uuid.uuid4().hex[:8]}:")

    run_state_machine_as_test(OnServers, settings=_settings(25))
