"""``import tasks`` is all a producer needs for ``append_event(kick=True)``: the committed event's
drain reaches the real broker (PostgreSQL and Redis; a fresh interpreter, where nothing but
``tasks`` and ``models`` is imported)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import redis

from tasks.settings import Settings
from tasks.testing import processes
from tasks.testing.workers import environment

PRODUCER = textwrap.dedent(
    """\
    import tasks
    from models import append_event, create_run, session_factory

    Session = session_factory()
    with Session.begin() as session:
        run = create_run(session)
        append_event(session, run.id, "probe", {"n": 1}, kick=True)
    print(run.id)
    """
)


def test_a_producer_that_only_imported_tasks_kicks_its_run_into_the_broker(
    settings: Settings, key_space: str, redis_client: redis.Redis
) -> None:
    queue = f"{key_space}queue"

    try:
        done = subprocess.run(
            [sys.executable, "-c", PRODUCER],
            cwd=processes.PROJECT_ROOT,
            env=environment(settings, queue, settings.redis_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        messages = [json.loads(raw) for raw in redis_client.lrange(queue, 0, -1)]
    finally:  # the queue lies in the test's key space (deleted by the fixture); its bindings:
        redis_client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")

    assert done.returncode == 0, done.stderr
    # No warning either: before, the kick raised ConfigError (no kicker registered).
    assert done.stderr == ""
    assert [m["headers"]["task"] for m in messages] == ["outbox.drain_kicked"]
