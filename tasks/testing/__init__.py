"""Testing tools: the pytest plugin (``plugin``) and what it is built of, and the worker
supervisor the bench shares (``processes``, standard library only).

``from tasks.testing import assert_events`` is the assertion a test imports, and the fixtures'
types (``Drainer``, ``Streams``, ...) come from here too. Names load on first use, so
importing one module here loads no other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.testing.assertions import assert_events, events_diff
    from tasks.testing.drainer import Drained, Drainer, NotIdle
    from tasks.testing.eager import RecordingKicker
    from tasks.testing.guard import ForeignDrainer, Guard
    from tasks.testing.sinks import MemoryStreams, RedisStreams, Streams, events
    from tasks.testing.workers import Workers

_NAMES = {
    "assert_events": "tasks.testing.assertions",
    "events_diff": "tasks.testing.assertions",
    "events": "tasks.testing.sinks",
    "Drained": "tasks.testing.drainer",
    "Drainer": "tasks.testing.drainer",
    "NotIdle": "tasks.testing.drainer",
    "ForeignDrainer": "tasks.testing.guard",
    "Guard": "tasks.testing.guard",
    "MemoryStreams": "tasks.testing.sinks",
    "RecordingKicker": "tasks.testing.eager",
    "RedisStreams": "tasks.testing.sinks",
    "Streams": "tasks.testing.sinks",
    "Workers": "tasks.testing.workers",
}

__all__ = [
    "Drained",
    "Drainer",
    "ForeignDrainer",
    "Guard",
    "MemoryStreams",
    "NotIdle",
    "RecordingKicker",
    "RedisStreams",
    "Streams",
    "Workers",
    "assert_events",
    "events",
    "events_diff",
]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'tasks.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
