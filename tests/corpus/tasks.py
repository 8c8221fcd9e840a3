"""Bad messages to the Celery tasks: wrong argument counts and names, wrong types, huge
strings, lists for strings, for outbox.drain_run, outbox.drain_runs, outbox.drain_kicked and
outbox.dispatch.

Each case is sent, as JSON, to a real worker's queue. The worker must log the one line it
names (``raised expected: <error>`` or ``succeeded ...: <result>``), without a traceback,
write nothing, and then still drain a real run. ``run`` is a run with pending events that
the bad message names in some wrong way; it must still be pending afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from models import InvalidRunId
from models.errors import InvalidTaskArguments

FIVE_MB = 5 * 1024 * 1024
UNKNOWN = "0badc0de-0000-4000-8000-000000000000"  # no test creates this run


@dataclasses.dataclass(frozen=True)
class TaskCase:
    """Send ``task`` these arguments; the worker logs ``error(message)`` or ``returns``."""

    id: str
    task: str
    args: Callable[[str], list[Any]]
    kwargs: Callable[[str], dict[str, Any]] = lambda _run: {}
    error: type[Exception] | None = None
    message: Callable[[str], str] = lambda _run: ""
    returns: dict[str, Any] | None = None


def _arguments(task: str, takes: str, positional: int, keyword: int, reason: str) -> str:
    return (
        f"{task} takes {takes}, got {positional} positional and {keyword} keyword arguments: "
        f"{reason}"
    )


def _not_a_uuid(got: str) -> str:
    return f"run id must be a UUID, got {got}"


_LONG = f"{'a' * 60!r}... ({FIVE_MB} characters)"
_TOO_MANY = "too many positional arguments"

DRAIN_RUN = [
    TaskCase(
        "drain_run()",
        "outbox.drain_run",
        lambda run: [],
        error=InvalidTaskArguments,
        message=lambda run: _arguments(
            "outbox.drain_run", "(run_id)", 0, 0, "missing a required argument: 'run_id'"
        ),
    ),
    TaskCase(
        "drain_run(run, run)",
        "outbox.drain_run",
        lambda run: [run, run],
        error=InvalidTaskArguments,
        message=lambda run: _arguments("outbox.drain_run", "(run_id)", 2, 0, _TOO_MANY),
    ),
    TaskCase(
        "drain_run(run_id=run, force=true)",
        "outbox.drain_run",
        lambda run: [],
        lambda run: {"run_id": run, "force": True},
        error=InvalidTaskArguments,
        message=lambda run: _arguments(
            "outbox.drain_run", "(run_id)", 0, 2, "got an unexpected keyword argument 'force'"
        ),
    ),
    TaskCase(
        "drain_run(runid=run)",
        "outbox.drain_run",
        lambda run: [],
        lambda run: {"runid": run},
        error=InvalidTaskArguments,
        message=lambda run: _arguments(
            "outbox.drain_run", "(run_id)", 0, 1, "missing a required argument: 'run_id'"
        ),
    ),
    TaskCase(
        "drain_run(5)",
        "outbox.drain_run",
        lambda run: [5],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("5"),
    ),
    TaskCase(
        "drain_run(1.5)",
        "outbox.drain_run",
        lambda run: [1.5],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("1.5"),
    ),
    TaskCase(
        "drain_run(true)",
        "outbox.drain_run",
        lambda run: [True],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("True"),
    ),
    TaskCase(
        "drain_run(null)",
        "outbox.drain_run",
        lambda run: [None],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("None"),
    ),
    TaskCase(
        "drain_run([run])",
        "outbox.drain_run",
        lambda run: [[run]],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid(repr([run])),
    ),
    TaskCase(
        "drain_run({run_id: run})",
        "outbox.drain_run",
        lambda run: [{"run_id": run}],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid(repr({"run_id": run})),
    ),
    TaskCase(
        "drain_run('')",
        "outbox.drain_run",
        lambda run: [""],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("''"),
    ),
    TaskCase(
        "drain_run('not-a-uuid')",
        "outbox.drain_run",
        lambda run: ["not-a-uuid"],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("'not-a-uuid'"),
    ),
    TaskCase(
        "drain_run(5 MB)",
        "outbox.drain_run",
        lambda run: ["a" * FIVE_MB],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid(_LONG),
    ),
    TaskCase(
        "drain_run(run + NUL)",
        "outbox.drain_run",
        lambda run: [f"{run}\x00"],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid(repr(f"{run}\x00")),
    ),
    TaskCase(
        "drain_run(lone surrogate)",
        "outbox.drain_run",
        lambda run: ["\ud800"],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("'\\ud800'"),
    ),
    TaskCase(
        "drain_run(unknown run)",
        "outbox.drain_run",
        lambda run: [UNKNOWN],
        returns={"run_id": UNKNOWN, "status": "missing", "published": 0, "already_present": 0},
    ),
]

DRAIN_RUNS = [
    TaskCase(
        "drain_runs()",
        "outbox.drain_runs",
        lambda run: [],
        error=InvalidTaskArguments,
        message=lambda run: _arguments(
            "outbox.drain_runs", "(run_ids)", 0, 0, "missing a required argument: 'run_ids'"
        ),
    ),
    TaskCase(
        "drain_runs([run], [run])",
        "outbox.drain_runs",
        lambda run: [[run], [run]],
        error=InvalidTaskArguments,
        message=lambda run: _arguments("outbox.drain_runs", "(run_ids)", 2, 0, _TOO_MANY),
    ),
    TaskCase(
        "drain_runs(run_ids=[run], limit=5)",
        "outbox.drain_runs",
        lambda run: [],
        lambda run: {"run_ids": [run], "limit": 5},
        error=InvalidTaskArguments,
        message=lambda run: _arguments(
            "outbox.drain_runs", "(run_ids)", 0, 2, "got an unexpected keyword argument 'limit'"
        ),
    ),
    TaskCase(
        "drain_runs(run): a string for a list",
        "outbox.drain_runs",
        lambda run: [run],
        error=InvalidTaskArguments,
        message=lambda run: f"outbox.drain_runs takes a list of run ids, got {run!r}",
    ),
    TaskCase(
        "drain_runs(5)",
        "outbox.drain_runs",
        lambda run: [5],
        error=InvalidTaskArguments,
        message=lambda run: "outbox.drain_runs takes a list of run ids, got 5",
    ),
    TaskCase(
        "drain_runs(null)",
        "outbox.drain_runs",
        lambda run: [None],
        error=InvalidTaskArguments,
        message=lambda run: "outbox.drain_runs takes a list of run ids, got None",
    ),
    TaskCase(
        "drain_runs({run_ids: [run]})",
        "outbox.drain_runs",
        lambda run: [{"run_ids": [run]}],
        error=InvalidTaskArguments,
        message=lambda run: (
            f"outbox.drain_runs takes a list of run ids, got {{'run_ids': ['{run}']}}"
        ),
    ),
    TaskCase(
        "drain_runs([5])",
        "outbox.drain_runs",
        lambda run: [[5]],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("5"),
    ),
    TaskCase(
        "drain_runs([null])",
        "outbox.drain_runs",
        lambda run: [[None]],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("None"),
    ),
    TaskCase(
        "drain_runs([run, 'bad']): the good run is not drained either",
        "outbox.drain_runs",
        lambda run: [[run, "bad"]],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid("'bad'"),
    ),
    TaskCase(
        "drain_runs([[run]])",
        "outbox.drain_runs",
        lambda run: [[[run]]],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid(repr([run])),
    ),
    TaskCase(
        "drain_runs([5 MB])",
        "outbox.drain_runs",
        lambda run: [["a" * FIVE_MB]],
        error=InvalidRunId,
        message=lambda run: _not_a_uuid(_LONG),
    ),
    TaskCase(
        "drain_runs(10,001 run ids)",
        "outbox.drain_runs",
        lambda run: [[run] * 10_001],
        error=InvalidTaskArguments,
        message=lambda run: "outbox.drain_runs takes at most 10000 run ids, got 10001",
    ),
    TaskCase(
        "drain_runs([])",
        "outbox.drain_runs",
        lambda run: [[]],
        returns={"runs": 0, "published": 0, "already_present": 0, "statuses": {}},
    ),
]

NO_ARGUMENTS = [
    TaskCase(
        f"{name.removeprefix('outbox.')}({shown})",
        name,
        args,
        kwargs,
        error=InvalidTaskArguments,
        message=lambda run, name=name, positional=positional, keyword=keyword, reason=reason: (
            _arguments(name, "no arguments", positional, keyword, reason)
        ),
    )
    for name, shown, args, kwargs, positional, keyword, reason in [
        (
            "outbox.drain_kicked",
            "[run]",
            lambda run: [[run]],
            lambda run: {},
            1,
            0,
            _TOO_MANY,
        ),
        (
            "outbox.drain_kicked",
            "run_ids=[run]",
            lambda run: [],
            lambda run: {"run_ids": [run]},
            0,
            1,
            "got an unexpected keyword argument 'run_ids'",
        ),
        ("outbox.dispatch", "1", lambda run: [1], lambda run: {}, 1, 0, _TOO_MANY),
        (
            "outbox.dispatch",
            "limit=5",
            lambda run: [],
            lambda run: {"limit": 5},
            0,
            1,
            "got an unexpected keyword argument 'limit'",
        ),
        ("outbox.dispatch", "5 MB", lambda run: ["a" * FIVE_MB], lambda run: {}, 1, 0, _TOO_MANY),
        (
            "outbox.dispatch",
            "null, null",
            lambda run: [None, None],
            lambda run: {},
            2,
            0,
            _TOO_MANY,
        ),
    ]
]

CASES = DRAIN_RUN + DRAIN_RUNS + NO_ARGUMENTS
