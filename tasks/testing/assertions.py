"""Assertions on what reached a stream: exactly these events, in this order, with a diff.

Payloads are compared as JSON values in a canonical form: key order and whitespace do not
count (the stream holds the payload as PostgreSQL's jsonb renders it), but types do: ``1``,
``1.0`` and ``true`` are three different payloads, as they are to a consumer.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence

from tasks.sink import StreamEntry

Event = tuple[str, object]  # (type, payload): the payload as a value, not as JSON text


def _line(item: StreamEntry | Event) -> str:
    """One event as a line: its type and its payload in canonical JSON."""
    if isinstance(item, StreamEntry):
        type_, payload = item.type, json.loads(item.payload)
    else:
        type_, payload = item
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return f"{type_} {canonical}"


def events_diff(actual: Sequence[StreamEntry | Event], expected: Sequence[Event]) -> str | None:
    """None when ``actual`` holds exactly the ``expected`` events in order; else the diff."""
    got = [_line(item) for item in actual]
    want = [_line(item) for item in expected]
    if got == want:
        return None
    diff = "\n".join(line.rstrip() for line in difflib.ndiff(want, got))
    return (
        f"the events are not the expected ones (expected {len(want)}, got {len(got)}; "
        f"- expected, + actual):\n{diff}"
    )


def assert_events(actual: Sequence[StreamEntry | Event], expected: Sequence[Event]) -> None:
    """Assert that ``actual`` (stream entries, or (type, payload) pairs) holds exactly the
    ``expected`` (type, payload) events, in this order; the error shows a line diff."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    problem = events_diff(actual, expected)
    if problem is not None:
        raise AssertionError(problem)
