"""Bad input to the `outbox` verbs that the CLI tests did not cover yet.

Every verb is covered, here or in the parametrised tests that ``COVERED_ELSEWHERE`` names.
Each case runs with one existing run (``run``, two pending events) and must exit with
``code``, print ``stdout`` (nothing, for an error) and one line on stderr, ``Error: `` and
``message`` (or a line that contains ``message``, for the verbs whose wording is their own
module's), and write nothing. Environment cases are in ``tests.corpus.environment``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

FIVE_MB = 5 * 1024 * 1024

# The bad input that tests/integration/test_cli*.py refuse already, by verb.
COVERED_ELSEWHERE = {
    "create-run": "test_cli.py::test_create_run_refuses_a_malformed_or_taken_id... (4 cases)",
    "emit": "test_cli.py::test_emit_refuses_bad_input_with_one_line_and_writes_nothing (22)",
    "drain": "test_cli_ops.py::test_drain_refuses_bad_input_with_one_line... (4)",
    "status": "test_cli_ops.py::test_status_refuses_a_limit_that_is_not_a_positive_integer (3)",
    "resume": "test_cli_ops.py::test_resume_refuses_bad_input_and_unknown_runs... (6)",
    "tail": "test_cli_ops.py::test_tail_refuses_bad_input_and_unknown_runs_with_one_line (8)",
    "demo": "test_cli_ops.py::test_demo_refuses_counts_below_one_and_writes_nothing (4)",
    "db upgrade": "test_cli.py::test_db_upgrade_of_an_unreachable_server_is_one_line... (1)",
    "(none)": "test_cli_ops.py::test_an_unknown_verb_is_one_line_exit_2 (1)",
}


@dataclasses.dataclass(frozen=True)
class CliCase:
    """``outbox ARGS`` exits with ``code``, prints ``stdout``, and refuses with ``message``."""

    id: str
    args: Callable[[str], list[str]]
    code: int
    message: Callable[[str], str]
    stdout: Callable[[str], str] = lambda _run: ""
    exact: bool = True  # False: the error line contains ``message``


def _bad_id(verb: str, got: str, argument: str = "RUN_ID") -> Callable[[str], str]:
    return lambda _run: (
        f"Invalid value for '{argument}': run id must be a UUID, got {got}. "
        f"See 'outbox {verb} --help'."
    )


def _bad_value(verb: str, option: str, detail: str) -> Callable[[str], str]:
    return lambda _run: f"Invalid value for '{option}': {detail}. See 'outbox {verb} --help'."


_LONG_ID = f"{'f' * 60!r}... ({FIVE_MB} characters)"
_PRINTABLE = (
    "event type must be printable text (no tabs, newlines, control characters or lone "
    "surrogates), got "
)
_NOT_FINITE = "payload is not JSON-serialisable: Out of range float values are not JSON compliant"

CASES = [
    # create-run
    CliCase(
        "create-run 5 MB id",
        lambda run: ["create-run", "f" * FIVE_MB],
        2,
        _bad_id("create-run", _LONG_ID, "[RUN_ID]"),
    ),
    CliCase(
        "create-run lone surrogate",
        lambda run: ["create-run", "\ud800"],
        2,
        _bad_id("create-run", "'\\ud800'", "[RUN_ID]"),
    ),
    CliCase(
        "create-run id and NUL",
        lambda run: ["create-run", f"{run}\x00"],
        2,
        lambda run: _bad_id("create-run", repr(f"{run}\x00"), "[RUN_ID]")(run),
    ),
    # emit
    CliCase(
        "emit type with NUL",
        lambda run: ["emit", run, "a\x00b"],
        2,
        lambda run: f"{_PRINTABLE}'a\\x00b'",
    ),
    CliCase(
        "emit type lone surrogate",
        lambda run: ["emit", run, "\ud800"],
        2,
        lambda run: f"{_PRINTABLE}'\\ud800'",
    ),
    CliCase(
        "emit type of 4 MB",
        lambda run: ["emit", run, "t" * (4 * 1024 * 1024)],
        2,
        lambda run: "event type is 4194304 characters, over the limit of 255",
    ),
    CliCase(
        "emit payload Infinity",
        lambda run: ["emit", run, "t", "--payload", "Infinity"],
        2,
        lambda run: _NOT_FINITE,
    ),
    CliCase(
        "emit payload -Infinity in a list",
        lambda run: ["emit", run, "t", "--payload", "[1, -Infinity]"],
        2,
        lambda run: _NOT_FINITE,
    ),
    CliCase(
        "emit payload NUL key",
        lambda run: ["emit", run, "t", "--payload", '{"\\u0000": 1}'],
        2,
        lambda run: "payload contains U+0000, which PostgreSQL JSONB cannot store",
    ),
    CliCase(
        "emit 5 MB run id",
        lambda run: ["emit", "f" * FIVE_MB, "t"],
        2,
        _bad_id("emit", _LONG_ID),
    ),
    # drain
    CliCase(
        "drain 5 MB run id",
        lambda run: ["drain", "f" * FIVE_MB],
        2,
        _bad_id("drain", _LONG_ID, "[RUN_ID]"),
    ),
    CliCase(
        "drain lone surrogate",
        lambda run: ["drain", "\ud800"],
        2,
        _bad_id("drain", "'\\ud800'", "[RUN_ID]"),
    ),
    # status
    CliCase(
        "status --limit 1.5",
        lambda run: ["status", "--limit", "1.5"],
        2,
        _bad_value("status", "--limit", "'1.5' is not a valid integer range"),
    ),
    CliCase(
        "status --limit 1e3",
        lambda run: ["status", "--limit", "1e3"],
        2,
        _bad_value("status", "--limit", "'1e3' is not a valid integer range"),
    ),
    # resume
    CliCase(
        "resume 5 MB run id",
        lambda run: ["resume", "f" * FIVE_MB],
        2,
        _bad_id("resume", _LONG_ID, "[RUN_IDS]..."),
    ),
    CliCase(
        "resume lone surrogate",
        lambda run: ["resume", "\ud800"],
        2,
        _bad_id("resume", "'\\ud800'", "[RUN_IDS]..."),
    ),
    # tail
    CliCase(
        "tail 5 MB run id",
        lambda run: ["tail", "f" * FIVE_MB],
        2,
        _bad_id("tail", _LONG_ID),
    ),
    CliCase(
        "tail --from 1e3",
        lambda run: ["tail", run, "--from", "1e3"],
        2,
        _bad_value("tail", "--from", "'1e3' is not a valid integer range"),
    ),
    CliCase(
        "tail --from beyond any integer PostgreSQL has",
        lambda run: ["tail", run, "--from", "9" * 30],
        0,
        lambda run: "",
    ),
    CliCase(
        "tail --follow --timeout abc",
        lambda run: ["tail", run, "--follow", "--timeout", "abc"],
        2,
        _bad_value("tail", "--timeout", "'abc' is not a valid float range"),
    ),
    # demo
    CliCase(
        "demo --runs abc",
        lambda run: ["demo", "--runs", "abc"],
        2,
        _bad_value("demo", "--runs", "'abc' is not a valid integer range"),
    ),
    CliCase(
        "demo --events 1.5",
        lambda run: ["demo", "--events", "1.5"],
        2,
        _bad_value("demo", "--events", "'1.5' is not a valid integer range"),
    ),
    # db upgrade
    CliCase(
        "db upgrade with an extra argument",
        lambda run: ["db", "upgrade", "now"],
        2,
        lambda run: "Got unexpected extra argument (now). See 'outbox db upgrade --help'.",
    ),
    CliCase(
        "db downgrade",
        lambda run: ["db", "downgrade"],
        2,
        lambda run: "No such command 'downgrade'. Did you mean 'upgrade'? See 'outbox db --help'.",
    ),
    # purge, verify and replay: the wording of their own options is theirs
    CliCase(
        "purge --older-than 0",
        lambda run: ["purge", "--older-than", "0"],
        2,
        lambda run: "Invalid value for '--older-than'",
        exact=False,
    ),
    CliCase(
        "purge --older-than nan",
        lambda run: ["purge", "--older-than", "nan"],
        2,
        lambda run: "Invalid value for '--older-than'",
        exact=False,
    ),
    CliCase(
        "purge --batch-size 0",
        lambda run: ["purge", "--batch-size", "0"],
        2,
        lambda run: "Invalid value for '--batch-size'",
        exact=False,
    ),
    CliCase(
        "verify 5 MB run id",
        lambda run: ["verify", "f" * FIVE_MB],
        2,
        _bad_id("verify", _LONG_ID, "[RUN_ID]"),
    ),
    CliCase(
        "verify RUN_ID and --all",
        lambda run: ["verify", run, "--all"],
        2,
        lambda run: "give either a RUN_ID or --all, not both. See 'outbox verify --help'.",
    ),
    CliCase(
        "replay malformed run id",
        lambda run: ["replay", "not-a-uuid"],
        2,
        _bad_id("replay", "'not-a-uuid'", "[RUN_ID]"),
    ),
    CliCase(
        "replay --from-seq 0",
        lambda run: ["replay", run, "--from-seq", "0"],
        2,
        _bad_value("replay", "--from-seq", "0 is not in the range x>=1"),
    ),
]
