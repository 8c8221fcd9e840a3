"""The outbox's Celery app run eagerly, and the process runtime pointed at a test's services.

Inside ``eager_outbox(...)``: a task sent with ``delay``/``apply_async`` runs in the caller and
its errors propagate (``task_always_eager``, ``task_eager_propagates``); no beat and no worker
run; a producer's kick on commit (``append_event(..., kick=True)``) is only recorded, so
nothing drains until the test says so; and the runtime that the tasks, the drain API and the
CLI look up (``tasks.runtime``) uses the test's database, sink and settings. Everything is put
back on leaving: the app's settings, the kicker, and the runtime (reset: built from the
environment again on its next use).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence

from models import kicks
from tasks import runtime
from tasks.pg import SessionFactory
from tasks.redis_sink import Client
from tasks.settings import Settings
from tasks.sink import Sink

EAGER_SETTINGS = {"task_always_eager": True, "task_eager_propagates": True}


class RecordingKicker:
    """A kicker (``models.kicks``) that queues nothing and records the runs it was given."""

    def __init__(self) -> None:
        self.kicks: list[list[uuid.UUID]] = []

    def __call__(self, run_ids: Sequence[uuid.UUID]) -> None:
        self.kicks.append(list(run_ids))

    @property
    def runs(self) -> set[uuid.UUID]:
        """Every run kicked so far."""
        return {run_id for kick in self.kicks for run_id in kick}


@contextlib.contextmanager
def eager_outbox(
    settings: Settings,
    *,
    session_factory: SessionFactory,
    sink: Sink,
    redis_client: Client | None = None,
    kicker: kicks.Kicker | None = None,
) -> Iterator[runtime.Runtime]:
    """Run the block with the app eager, ``kicker`` registered and the runtime configured.

    ``redis_client``: the client of the queue marks (None: one for ``settings.redis_url``,
    connected on its first use only).
    """
    # Loads Celery, only when a test asks for it. tasks.outbox registers the tasks, and its
    # kicker, which is put back afterwards as the one this replaced.
    import tasks.outbox  # noqa: F401
    from tasks.celery_app import app

    saved = {name: app.conf[name] for name in EAGER_SETTINGS}
    previous_kicker = kicks.set_kicker(kicker if kicker is not None else RecordingKicker())
    app.conf.update(EAGER_SETTINGS)
    try:
        yield runtime.configure(
            settings, session_factory=session_factory, redis_client=redis_client, sink=sink
        )
    finally:
        runtime.reset()
        app.conf.update(saved)
        kicks.set_kicker(previous_kicker)
