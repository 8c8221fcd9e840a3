"""Bad input to the Python API: the producer (create_run, append_event) and the drain API
(drain_outbox_for_run, drain_outbox_for_runs, drain_outbox_once, resume).

Each case calls the API through ``Api`` (this test's database, sink and settings, and one
existing run, ``api.run``, with two pending events) and names the error it must end in, with
a fragment of its message, or the status it must return. Nothing may be written, except the
run that the winner of a race creates.
"""

from __future__ import annotations

import dataclasses
import decimal
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import (
    ConfigError,
    InvalidPayload,
    InvalidRunId,
    PayloadTooLarge,
    RunExists,
    UnknownRun,
    append_event,
    create_run,
)
from tasks import drain_outbox_for_run, drain_outbox_for_runs, drain_outbox_once, resume
from tasks.settings import Settings
from tasks.sink import Sink
from tests.helpers import wait_until

MIB = 1024 * 1024
UNKNOWN = uuid.UUID("0badc0de-0000-4000-8000-000000000000")  # no test creates this run


@dataclasses.dataclass
class Api:
    """The API as one test sees it: its collaborators and one run with pending events."""

    Session: sessionmaker[Session]
    publisher: Sink
    settings: Settings
    run: uuid.UUID

    def append(self, run_id: object, type: object, payload: object, **options: Any) -> Any:
        with self.Session() as session, session.begin():
            return append_event(session, run_id, type, payload, **options)

    def create(self, run_id: object) -> Any:
        with self.Session() as session, session.begin():
            return create_run(session, run_id)

    def drain(self, run_id: object) -> Any:
        return drain_outbox_for_run(run_id, **self._collaborators())

    def drain_many(self, run_ids: list[object]) -> Any:
        return drain_outbox_for_runs(run_ids, **self._collaborators())

    def drain_once(self) -> Any:
        return drain_outbox_once(**self._collaborators())

    def resume(self, run_ids: list[object]) -> Any:
        return resume(run_ids, session_factory=self.Session)

    def _collaborators(self) -> dict[str, Any]:
        return {
            "session_factory": self.Session,
            "publisher": self.publisher,
            "settings": self.settings,
        }


@dataclasses.dataclass(frozen=True)
class ApiCase:
    """``call`` must raise ``error`` with ``message`` in it, or return what ``returns`` says."""

    id: str
    call: Callable[[Api], object]
    error: type[Exception] | None = None
    message: str = ""
    returns: Callable[[Api, Any], bool] | None = None
    runs_created: int = 0


def nested_list(depth: int) -> object:
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_dict(depth: int) -> object:
    value: object = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def circular() -> object:
    value: dict[str, object] = {}
    value["self"] = value
    return value


def race_to_create(api: Api) -> object:
    """Two sessions create one id: the loser waits for the winner's commit, then gets
    RunExists (not an IntegrityError), and its own transaction stays usable."""
    run_id = uuid.uuid4()
    outcome: list[BaseException] = []

    def lose() -> None:
        try:
            with api.Session() as session, session.begin():
                try:
                    create_run(session, run_id)
                except RunExists:
                    session.execute(text("SELECT 1"))  # the loser's transaction is usable
                    raise
        except BaseException as exc:  # noqa: BLE001 - the case raises it in the test's thread
            outcome.append(exc)

    with api.Session() as winner, winner.begin():
        create_run(winner, run_id)  # flushed, not committed: the loser's insert waits on it
        thread = threading.Thread(target=lose)
        thread.start()
        _wait_for_a_lock_waiter(api)
    thread.join(30)
    if not outcome:
        raise AssertionError("the second create_run of one id did not fail")
    raise outcome[0]


def _wait_for_a_lock_waiter(api: Api) -> None:
    """Wait (bounded) until a session of this database waits for a lock: the loser's insert."""

    def waiting() -> bool:
        with api.Session() as session:
            return bool(
                session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                )
            )

    wait_until(waiting, 30, "the second create_run to wait for the first")


def _status(expected: str) -> Callable[[Api, Any], bool]:
    return lambda _api, result: str(result.status) == expected


FIVE_MB = 5 * MIB
NOT_PRINTABLE = "event type must be printable text"
NOT_A_STRING = "event type must be a non-empty string, got"
NUL = "payload contains U+0000, which PostgreSQL JSONB cannot store"
SURROGATE = "payload contains a lone surrogate"
TOO_DEEP = "payload is nested too deeply to encode as JSON"
NOT_JSON = "payload is not JSON-serialisable"
NOT_A_UUID = "run id must be a UUID, got"
NOT_A_STRING_KEY = "payload has a key that is not a string"


def _type(id: str, type: Callable[[], object], message: str) -> ApiCase:
    return ApiCase(
        f"append_event type: {id}",
        lambda api: api.append(api.run, type(), {"n": 1}),
        InvalidPayload,
        message,
    )


def _payload(
    id: str, payload: Callable[[], object], message: str, error: type[Exception] = InvalidPayload
) -> ApiCase:
    return ApiCase(
        f"append_event payload: {id}",
        lambda api: api.append(api.run, "t", payload()),
        error,
        message,
    )


def _run_id(call: str, id: str, run_id: Callable[[Api], object], message: str) -> ApiCase:
    calls: dict[str, Callable[[Api, object], object]] = {
        "append_event": lambda api, r: api.append(r, "t", {}),
        "create_run": lambda api, r: api.create(r),
        "drain_outbox_for_run": lambda api, r: api.drain(r),
        "drain_outbox_for_runs": lambda api, r: api.drain_many([api.run, r]),
        "resume": lambda api, r: api.resume([r]),
    }
    run = calls[call]
    return ApiCase(f"{call} run id: {id}", lambda api: run(api, run_id(api)), InvalidRunId, message)


# Run ids that are not UUIDs, for every function that takes one.
BAD_RUN_IDS: list[tuple[str, Callable[[Api], object], str]] = [
    ("True", lambda api: True, f"{NOT_A_UUID} True"),
    ("1", lambda api: 1, f"{NOT_A_UUID} 1"),
    ("None", lambda api: None, f"{NOT_A_UUID} None"),
    ("bytes", lambda api: api.run.bytes, f"{NOT_A_UUID} b"),
    ("a list of the run's id", lambda api: [str(api.run)], f"{NOT_A_UUID} ['"),
    ("a dict", lambda api: {"id": str(api.run)}, f"{NOT_A_UUID} {{'id'"),
    ("nan", lambda api: float("nan"), f"{NOT_A_UUID} nan"),
    ("5 MB of text", lambda api: "f" * FIVE_MB, "... (5242880 characters)"),
    ("a lone surrogate", lambda api: "\ud800", f"{NOT_A_UUID} '\\ud800'"),
    ("the run's id and a NUL", lambda api: f"{api.run}\x00", "\\x00'"),
    ("not-a-uuid", lambda api: "not-a-uuid", f"{NOT_A_UUID} 'not-a-uuid'"),
]
# Not every function gets every id: these are the ones each surface needs most.
_RUN_ID_CALLS = {
    "append_event": [r[0] for r in BAD_RUN_IDS],
    "create_run": ["True", "1", "bytes", "a list of the run's id", "5 MB of text", "nan"],
    "drain_outbox_for_run": [
        "True",
        "1",
        "None",
        "bytes",
        "a list of the run's id",
        "a dict",
        "5 MB of text",
        "a lone surrogate",
    ],
    "drain_outbox_for_runs": ["None", "not-a-uuid", "5 MB of text"],
    "resume": ["1", "not-a-uuid", "5 MB of text"],
}

CASES: list[ApiCase] = [
    # append_event: the type
    _type("a NUL", lambda: "a\x00b", NOT_PRINTABLE),
    _type("a lone surrogate", lambda: "\ud800", NOT_PRINTABLE),
    _type("a newline", lambda: "order\ncreated", NOT_PRINTABLE),
    _type("a tab", lambda: "order\tcreated", NOT_PRINTABLE),
    _type("a terminal escape", lambda: "\x1b[2J", NOT_PRINTABLE),
    _type("4 MB", lambda: "t" * (4 * MIB), "event type is 4194304 characters, over the limit"),
    _type("256 characters", lambda: "t" * 256, "event type is 256 characters, over the limit of"),
    _type("empty", lambda: "", f"{NOT_A_STRING} ''"),
    _type("an int", lambda: 1, f"{NOT_A_STRING} 1"),
    _type("None", lambda: None, f"{NOT_A_STRING} None"),
    _type("bytes", lambda: b"order.created", f"{NOT_A_STRING} b'order.created'"),
    _type("a list", lambda: ["order.created"], f"{NOT_A_STRING} ['order.created']"),
    _type("True", lambda: True, f"{NOT_A_STRING} True"),
    # append_event: the payload
    _payload("a NUL in a value", lambda: {"a": "x\x00y"}, NUL),
    _payload("a NUL string", lambda: "\x00", NUL),
    _payload("a NUL in a key", lambda: {"\x00": 1}, NUL),
    _payload("a lone surrogate in a value", lambda: {"a": "\ud800"}, SURROGATE),
    _payload("a lone surrogate in a key", lambda: {"\udfff": 1}, SURROGATE),
    _payload("lists nested 10,000 levels", lambda: nested_list(10_000), TOO_DEEP),
    _payload("objects nested 10,000 levels", lambda: nested_dict(10_000), TOO_DEEP),
    _payload(
        "1 MiB of text",
        lambda: "x" * MIB,
        "payload is 1048578 bytes as JSON, over the limit of 1048576 bytes",
        PayloadTooLarge,
    ),
    _payload(
        "600,000 two-byte characters",
        lambda: "é" * 600_000,
        "payload is 1200002 bytes as JSON, over the limit of 1048576 bytes",
        PayloadTooLarge,
    ),
    ApiCase(
        "append_event payload: over an explicit max_bytes",
        lambda api: api.append(api.run, "t", {"n": "0123456789abcdef"}, max_bytes=16),
        PayloadTooLarge,
        "over the limit of 16 bytes",
    ),
    _payload("NaN", lambda: float("nan"), f"{NOT_JSON}: Out of range float values"),
    _payload("infinity", lambda: float("inf"), f"{NOT_JSON}: Out of range float values"),
    _payload("-infinity in a list", lambda: [1, float("-inf")], f"{NOT_JSON}: Out of range"),
    _payload("NaN in an object", lambda: {"x": float("nan")}, f"{NOT_JSON}: Out of range"),
    _payload("bytes", lambda: b"x", f"{NOT_JSON}: Object of type bytes"),
    _payload("a set", lambda: {1, 2}, f"{NOT_JSON}: Object of type set"),
    _payload("an object", lambda: object(), f"{NOT_JSON}: Object of type object"),
    _payload("a Decimal", lambda: decimal.Decimal("1.5"), f"{NOT_JSON}: Object of type Decimal"),
    _payload("a tuple key", lambda: {(1, 2): 3}, f"{NOT_JSON}: keys must be str, int, float"),
    _payload("a circular object", circular, f"{NOT_JSON}: Circular reference detected"),
    # json.dumps would store {1: "x"} as {"1": "x"}: a key that is not a string is refused.
    _payload("an int key", lambda: {1: "x"}, f"{NOT_A_STRING_KEY}, 1 (int), in payload:"),
    _payload("a None key", lambda: {None: "x"}, f"{NOT_A_STRING_KEY}, None (NoneType), in"),
    _payload("a bool key", lambda: {"a": {True: 1}}, 'True (bool), in payload["a"]:'),
    _payload("a float key", lambda: [{"a": 1}, {1.5: 1}], "1.5 (float), in payload[1]:"),
    _payload(
        "an int key beside objects nested 500 levels",
        lambda: {"a": nested_dict(500), "b": [{"c": {0: 1}}]},
        'in payload["b"][0]["c"]: JSON object keys must be strings',
    ),
    _payload(
        "an int key under a 1,000-character key",
        lambda: {"k" * 1000: {2: 1}},
        "JSON object keys must be strings",
    ),
    _payload("a 5,000-digit integer", lambda: 10**5000, f"{NOT_JSON}: Exceeds the limit"),
    # append_event and create_run: runs that do not exist or exist already
    ApiCase(
        "append_event run id: an unknown run",
        lambda api: api.append(UNKNOWN, "t", {}),
        UnknownRun,
        f"no run with id {UNKNOWN}",
    ),
    ApiCase(
        "create_run run id: taken",
        lambda api: api.create(api.run),
        RunExists,
        "exists already",
    ),
    ApiCase(
        "create_run run id: two sessions race to create it",
        race_to_create,
        RunExists,
        "exists already",
        runs_created=1,
    ),
    # the drain API: what it returns for runs that are not there
    ApiCase(
        "drain_outbox_for_run run id: an unknown run",
        lambda api: api.drain(UNKNOWN),
        returns=_status("missing"),
    ),
    ApiCase(
        "drain_outbox_for_runs: no runs",
        lambda api: api.drain_many([]),
        returns=lambda _api, result: result == [],
    ),
    ApiCase(
        "resume run id: an unknown run",
        lambda api: api.resume([UNKNOWN]),
        returns=lambda _api, result: result == [],
    ),
    ApiCase(
        "drain_outbox_once: a run id given as an argument",
        lambda api: drain_outbox_once(api.run),
        TypeError,
        "takes 0 positional arguments but 1 was given",
    ),
    ApiCase(
        "drain_outbox_once: settings with a batch size of 0",
        lambda api: drain_outbox_once(
            session_factory=api.Session,
            publisher=api.publisher,
            settings=dataclasses.replace(api.settings, batch_size=0),
        ),
        ConfigError,
        "OUTBOX_BATCH_SIZE must be an integer from 1 to 100000, got 0",
    ),
    ApiCase(
        "drain_outbox_for_run: settings with an infinite kick linger",
        lambda api: drain_outbox_for_run(
            api.run,
            session_factory=api.Session,
            publisher=api.publisher,
            settings=dataclasses.replace(api.settings, kick_linger=float("inf")),
        ),
        ConfigError,
        "OUTBOX_KICK_LINGER must be a number of seconds above 0 and at most 60, got inf",
    ),
]

for _call, _ids in _RUN_ID_CALLS.items():
    for _id, _value, _message in BAD_RUN_IDS:
        if _id in _ids:
            CASES.append(_run_id(_call, _id, _value, _message))
