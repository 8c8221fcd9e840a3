"""The reliability table: each scenario's figures, and ``docs/reliability.md`` written from them.

The suite writes the page itself, at the end of a run at the large size (``conftest.py``'s
session-finish hook), so the table is always what the code did, with the date and the commit
it was run on. At the bounded size the table is printed in pytest's summary only.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PAGE = PROJECT_ROOT / "docs" / "reliability.md"
COMMAND = "pytest tests/faults --fault-size=large"

COLUMNS = (
    "scenario",
    "size",
    "faults injected",
    "events",
    "lost",
    "duplicated",
    "reordered",
    "worker errors",
    "seconds to settle",
)


@dataclasses.dataclass(frozen=True)
class Figures:
    """One scenario's row of the table."""

    scenario: str
    size: str  # e.g. "20,000 events, 200 runs, 2 workers"
    faults: str  # what was injected, and how many times
    events: int  # committed events the checker compared
    lost: int
    duplicated: int
    reordered: int
    worker_errors: int
    settle_seconds: float  # from the end of the last fault until every event was verified
    test: str = ""  # the test that ran the scenario
    errors: tuple[str, ...] = ()  # the workers' error records, for the page's error section

    def cells(self) -> list[str]:
        """The row's cells, as the table prints them."""
        return [
            self.scenario,
            self.size,
            self.faults,
            f"{self.events:,}",
            f"{self.lost:,}",
            f"{self.duplicated:,}",
            f"{self.reordered:,}",
            f"{self.worker_errors:,}",
            f"{self.settle_seconds:.1f}",
        ]


def table(rows: Sequence[Figures]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + " |",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def commit() -> str:
    """The checked-out commit, and whether the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head} with uncommitted changes" if changed else head


INTRO = f"""\
# Reliability under faults

The publisher promises, per run: events reach the run's stream in `seq` order, none is lost,
none is in the stream twice, and no race between workers, beats, producers, deletes and the
servers crashes anything. `tests/faults/` checks that promise by injecting faults into a real
deployment on this machine and counting what went wrong. This page is written by that suite
itself, at the end of a run at the large size:

```console
$ {COMMAND}
```

Each scenario starts its own servers and processes and always stops them: a database of its
own (copied from the migrated template) with a PostgreSQL role of its own holding only the
worker's privileges of the [least-privilege snippet](security.md), a
private `redis-server` as the sink on a free port, its own broker queue, real `celery worker`
(prefork) and `celery beat` (dispatching every 0.5 s) subprocesses under that role, with the
other settings at their defaults but for shorter waits after a fault (queued marks expire
after 10 s, `OUTBOX_QUEUED_TTL`, and a sink that is down is checked at least every 2 s,
`OUTBOX_OUTAGE_CHECK_MAX`), and a producer process appending
events throughout with `models.append_event` (3 threads, one transaction in 3 kicking a
drain). At the end, one checker (`tests/faults/checker.py`) compares every run's stream with
the database through `tasks.verify` (what `outbox verify --all` runs), and reads the workers'
logs:

- **lost**: published events missing from their stream;
- **duplicated**: stream entries whose event an earlier entry of the stream holds already;
- **reordered**: entries whose event comes before an earlier entry's event of the run;
- **worker errors**: log records at ERROR or CRITICAL, and tracebacks, other than a pool's
  report of a process the scenario itself killed with `kill -9`;
- **seconds to settle**: from the end of the last fault until every committed event was
  published and the streams verified (a replay included, where one was needed). At the
  bounded size a scenario that needs more than a minute fails.

Every scenario also fails on a run left parked (except the reused ids, which must be), an
event left pending, a row of `runs` or `run_outbox` still locked once the events are
published (`pg_locks`, and `SELECT ... FOR UPDATE SKIP LOCKED` over every cursor), or an
error in the producer.
"""

# What each scenario does, for the page: (the table's scenario name, a description).
SCENARIOS = (
    (
        "worker kill -9",
        (
            "two workers; `kill -9` of a worker's main process (the suite, as its supervisor, "
            "starts a new one) or of one of its pool processes, by turns, while the producer "
            "appends. The Redis broker loses the drains a killed worker held; their runs are "
            "queued again once their marks expire (`OUTBOX_QUEUED_TTL`, 10 s)."
        ),
    ),
    (
        "sink restart, AOF",
        (
            "the sink's Redis runs with `appendonly yes` and `appendfsync always`; it is killed "
            "with `kill -9` and started again, down about two seconds each time. Nothing may be "
            "lost."
        ),
    ),
    (
        "sink restart, no persistence",
        (
            "the same with a Redis that keeps nothing, so every restart loses the streams. The "
            "checker first holds `outbox verify` to report exactly what the restarts lost (the "
            "events published before the last restart, by their `published_at`), then runs "
            "`outbox replay --all-lost --rebuild` as an operator would, then checks again. The "
            "table's lost column is counted after the replay; the faults column says how many "
            "entries the restarts took."
        ),
    ),
    (
        "database connections killed",
        (
            "`pg_terminate_backend` on every connection of the scenario's workers (selected by "
            "the scenario's database and the application name its workers' URL sets, never "
            "another session), again and again."
        ),
    ),
    (
        "4 workers, 2 beats",
        (
            "four workers and two beats on one database, and no other fault: twice the "
            "dispatches, and drains racing for runs. On the Redis broker and on RabbitMQ (its "
            "queue deleted afterwards)."
        ),
    ),
    (
        "runs deleted, ids reused",
        (
            "runs deleted while they drain, some of them created again at once with the same id "
            "and given new events. Those must end parked with a CONFLICT (their old stream holds "
            "other events at their ids) and none of their new events published; they are counted "
            "apart, not as lost or wrong."
        ),
    ),
    (
        "slow or black-holed sink",
        (
            "the workers and producers reach the sink through a TCP proxy that the suite owns. By "
            "turns it delays every chunk, stalls (accepts connections and forwards nothing), and "
            "drops every connection. `OUTBOX_REDIS_TIMEOUT` is 1 s and the task time limits 10 s "
            "(soft) and 20 s: no task may run past them, and no lock may outlive its drain. "
            "A stall leaves queued marks behind whose drains were never sent (a mark's `SET` "
            "reached Redis after its caller had given up): those runs wait for the marks to "
            "expire (`OUTBOX_QUEUED_TTL`, 10 s), which is most of this scenario's settling."
        ),
    ),
    (
        "sink out of memory",
        (
            "the sink's `maxmemory` is set to 1 byte with `noeviction` (`CONFIG SET`) for a few "
            "seconds at a time, so every write is refused with OOM. No run may be parked."
        ),
    ),
)


def scenario_list() -> str:
    """The scenarios as a Markdown list."""
    items = "\n".join(f"- **{title}**: {text}" for title, text in SCENARIOS)
    return f"## The scenarios\n\n{items}\n"


def outcome(rows: Sequence[Figures], tests: int, failed: Sequence[str]) -> str:
    """One sentence on how the run's tests ended, naming the scenarios that failed."""
    if not failed:
        return f"All {tests} scenarios passed."
    titles = {row.test: row.scenario for row in rows}
    named = [f"*{titles[test]}*" if test in titles else f"`{test}` (no row)" for test in failed]
    return f"{len(failed)} of {tests} scenarios failed: {', '.join(named)}."


# What makes one error record like another: its time and process, task ids, ports.
_RECORD_HEAD = re.compile(r"^\[[^\]]*\] ")
_TASK_ID = re.compile(r"\[[0-9a-f]{8}-[0-9a-f-]{27}\]")
_PORT = re.compile(r"127\.0\.0\.1:\d+")


def error_kinds(rows: Sequence[Figures]) -> str:
    """The workers' errors by kind (their first lines, ids and ports left out), per scenario:
    a section of the page, empty when there were none."""
    lines = []
    for row in rows:
        firsts = (error.splitlines()[0] for error in row.errors)
        kinds = collections.Counter(
            _PORT.sub("127.0.0.1:PORT", _TASK_ID.sub("[...]", _RECORD_HEAD.sub("", first)))
            for first in firsts
        )
        lines += [f"- *{row.scenario}*, {n} x: `{kind[:300]}`" for kind, n in kinds.items()]
    if not lines:
        return ""
    return "## Worker errors\n\nThe first line of each, by kind:\n\n" + "\n".join(lines) + "\n\n"


def page(
    rows: Sequence[Figures],
    size: str,
    verdict: str,
    when: dt.datetime | None = None,
) -> str:
    """The whole page: the text, the table and where it comes from."""
    when = when or dt.datetime.now(dt.UTC)
    stamp = when.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{INTRO}\n## Results\n\n"
        f"Run at the {size} size on {stamp}, commit {commit()}, on this project's 2-core "
        "machine (PostgreSQL, Redis, RabbitMQ, the workers and the producers all on it). "
        f"{verdict}\n\n{table(rows)}\n\n{error_kinds(rows)}{scenario_list()}"
    )


def write_page(rows: Sequence[Figures], size: str, verdict: str) -> Path:
    """Write ``docs/reliability.md`` from the rows; return its path."""
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(page(rows, size, verdict))
    return PAGE
