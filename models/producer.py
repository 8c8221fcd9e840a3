"""The producer API: create runs and append their events inside the caller's transaction."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import uuid
from collections.abc import Iterator

from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, make_transient_to_detached

from models import env as settings_env
from models import errors, kicks
from models.ids import parse_run_id
from models.run import Run, RunEvent, RunOutbox

KICK_ENV = "OUTBOX_KICK_ON_COMMIT"
MAX_PAYLOAD_BYTES_ENV = "OUTBOX_MAX_PAYLOAD_BYTES"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# PostgreSQL's jsonb takes up to 255 MB; a payload a quarter of that belongs in object storage.
MAX_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_TYPE_CHARS = 255

# One round trip: take the run's next seq and insert the event with it. The UPDATE locks the
# run's counter row, so concurrent producers of one run queue here, seq order is commit order
# and a rollback leaves no gap; drains never lock that row against it. No row: no such run.
_APPEND = text(
    """
    WITH counter AS (
        UPDATE runs SET last_seq = last_seq + 1 WHERE id = :run_id RETURNING id, last_seq
    )
    INSERT INTO run_events (run_id, seq, type, payload)
    SELECT id, last_seq, :type, CAST(:payload AS jsonb) FROM counter
    RETURNING id, seq, created_at
    """
)
# SQLSTATEs of a connection that failed or that the server ended: connection_exception (08...),
# admin_shutdown (pg_terminate_backend, a fast shutdown), crash_shutdown, cannot_connect_now.
_LOST_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
# Values that hold no object keys: the key check skips them without looking further.
_LEAVES = frozenset({str, int, float, bool, type(None)})
_STR = itertools.repeat(str)  # map(isinstance, keys, _STR): every key's check, at C speed
# JSON escapes U+0000 as \u0000, which JSONB refuses; an escaped backslash before it does not count.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def max_payload_bytes(environ: dict[str, str] | None = None) -> int:
    """Return the payload size limit from OUTBOX_MAX_PAYLOAD_BYTES (default 1 MiB)."""
    env = os.environ if environ is None else environ
    return settings_env.integer(
        env, MAX_PAYLOAD_BYTES_ENV, DEFAULT_MAX_PAYLOAD_BYTES, high=MAX_MAX_PAYLOAD_BYTES
    )


def kick_by_default(environ: dict[str, str] | None = None) -> bool:
    """Return whether append_event kicks a drain on commit unless told (OUTBOX_KICK_ON_COMMIT)."""
    env = os.environ if environ is None else environ
    return settings_env.flag(env, KICK_ENV, False)


def encode_payload(payload: object, limit: int) -> str:
    """Return ``payload`` as JSON text, or raise InvalidPayload / PayloadTooLarge."""
    try:
        encoded = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except RecursionError as exc:
        raise errors.InvalidPayload("payload is nested too deeply to encode as JSON") from exc
    except (TypeError, ValueError) as exc:
        raise errors.InvalidPayload(f"payload is not JSON-serialisable: {exc}") from exc
    if _has_non_string_key(payload):
        path, key = _non_string_key(payload)
        raise errors.InvalidPayload(
            f"payload has a key that is not a string, {errors.preview(key)} "
            f"({type(key).__name__}), in {path if len(path) <= 120 else path[:120] + '...'}: "
            "JSON object keys must be strings"
        )
    # The substring test first: the pattern's look-behind costs more than the encoding.
    if "\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
        raise errors.InvalidPayload("payload contains U+0000, which PostgreSQL JSONB cannot store")
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise errors.InvalidPayload(
            "payload contains a lone surrogate (such as \\ud800), which is not valid Unicode text"
        ) from exc
    if size > limit:
        raise errors.PayloadTooLarge(
            f"payload is {size} bytes as JSON, over the limit of {limit} bytes "
            f"(set {MAX_PAYLOAD_BYTES_ENV} to change it)"
        )
    return encoded


def _has_non_string_key(payload: object) -> bool:
    """Whether a dict anywhere in ``payload`` (encoded already, so finite and acyclic) has a
    key that is not a string: json.dumps would store ``{1: "x"}`` as ``{"1": "x"}``."""
    todo = [payload]
    pop, push = todo.pop, todo.extend
    leaves = _LEAVES
    while todo:
        value = pop()
        if isinstance(value, dict):
            if not all(map(isinstance, value, _STR)):
                return True
            push([item for item in value.values() if type(item) not in leaves])
        elif isinstance(value, list | tuple):
            push([item for item in value if type(item) not in leaves])
    return False


def _non_string_key(payload: object, path: str = "payload") -> tuple[str, object]:
    """The path of the first dict in ``payload`` with a key that is not a string, and the key
    (only called once ``_has_non_string_key`` found one: the slow walk that names it)."""
    if isinstance(payload, dict):
        for key, item in payload.items():
            if not isinstance(key, str):
                return path, key
            if _has_non_string_key(item):
                return _non_string_key(item, f"{path}[{json.dumps(key, ensure_ascii=False)}]")
    elif isinstance(payload, list | tuple):
        for index, item in enumerate(payload):
            if _has_non_string_key(item):
                return _non_string_key(item, f"{path}[{index}]")
    raise AssertionError("no key that is not a string")  # pragma: no cover


@contextlib.contextmanager
def _database() -> Iterator[None]:
    """Turn the driver's error for a connection that was refused or broke into
    DatabaseUnavailable; every other database error (a constraint, a timeout) passes."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if not _connection_lost(exc):
            raise
        # The driver's first line only (psycopg adds hints on more lines), cut short.
        reason = (str(exc.orig).strip().splitlines() or ["no reason given"])[0][:160]
        raise errors.DatabaseUnavailable(
            f"the database could not be reached ({reason}); "
            "check OUTBOX_DATABASE_URL and that the server is running"
        ) from exc


def _connection_lost(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    state: str | None = getattr(exc.orig, "sqlstate", None)
    # No SQLSTATE: the client's own error (refused, closed, timed out), never the server's.
    return state is None or state.startswith(_LOST_CONNECTION_STATES)


def check_type(type: object) -> None:
    """Raise InvalidPayload unless ``type`` is 1 to 255 characters of printable text."""
    if not isinstance(type, str) or not type:
        raise errors.InvalidPayload(
            f"event type must be a non-empty string, got {errors.preview(type)}"
        )
    if len(type) > MAX_TYPE_CHARS:
        raise errors.InvalidPayload(
            f"event type is {len(type)} characters, over the limit of {MAX_TYPE_CHARS}"
        )
    if not type.isprintable():
        raise errors.InvalidPayload(
            "event type must be printable text (no tabs, newlines, control characters or lone "
            f"surrogates), got {errors.preview(type)}"
        )


def create_run(session: Session, run_id: uuid.UUID | str | None = None) -> Run:
    """Create a run and its outbox row in the caller's transaction; ``.id`` is set at once.

    Raises InvalidRunId for a malformed ``run_id``, RunExists for one already taken and
    DatabaseUnavailable when the connection is refused or breaks.
    """
    rid = uuid.uuid4() if run_id is None else parse_run_id(run_id)
    with _database():
        return _create_run(session, rid, given=run_id is not None)


def _create_run(session: Session, rid: uuid.UUID, *, given: bool) -> Run:
    if given and session.get(Run, rid) is not None:
        raise errors.RunExists(f"a run with id {rid} exists already")
    run = Run(id=rid, last_seq=0)
    run.outbox = RunOutbox(run_id=run.id)
    if not given:
        session.add(run)
        # Flush now so that append_event's counter UPDATE in this transaction finds the row.
        session.flush()
        return run
    try:
        # A savepoint: a concurrent transaction that created the same id makes this insert
        # fail, and the caller's transaction must stay usable.
        with session.begin_nested():
            session.add(run)
    except IntegrityError as exc:
        raise errors.RunExists(f"a run with id {rid} exists already") from exc
    return run


def append_event(
    session: Session,
    run_id: uuid.UUID | str,
    type: str,
    payload: object,
    *,
    kick: bool | None = None,
    max_bytes: int | None = None,
) -> RunEvent:
    """Add the run's next event in the caller's transaction; it is published after commit.

    With ``kick`` (default: OUTBOX_KICK_ON_COMMIT), the run is kicked right after the
    transaction commits (once per run, however many events), and never on rollback: a drain
    is queued, and the event reaches the stream without waiting for beat's next dispatch.

    Raises InvalidRunId, UnknownRun, InvalidPayload or PayloadTooLarge before anything is
    written, so a refused event never reaches the outbox; ConfigError for a kick when no
    kicker is registered (see ``models.kicks``); DatabaseUnavailable when the connection is
    refused or breaks (the driver's error is its ``__cause__``).
    """
    rid = parse_run_id(run_id)
    kick = kick_by_default() if kick is None else kick
    if kick:
        kicks.kicker()  # fail before writing if a kick cannot be sent
    check_type(type)
    encoded = encode_payload(payload, max_payload_bytes() if max_bytes is None else max_bytes)
    with _database():
        row = session.execute(
            _APPEND, {"run_id": rid, "type": type, "payload": encoded}
        ).one_or_none()
    if row is None:
        raise errors.UnknownRun(f"no run with id {rid}")
    # Written by the statement above rather than by a flush (a third of a commit's CPU):
    # the object joins the session as persistent, exactly as if it had been loaded.
    event = RunEvent(
        id=row.id,
        run_id=rid,
        seq=row.seq,
        type=type,
        payload=payload,
        created_at=row.created_at,
        published_at=None,
    )
    make_transient_to_detached(event)
    session.add(event)
    if kick:
        _kick_after_commit(session, rid)
    return event


_KICKS = "outbox_kicks"  # Session.info key: runs to kick when the transaction commits


def _kick_after_commit(session: Session, run_id: uuid.UUID) -> None:
    pending: set[uuid.UUID] | None = session.info.get(_KICKS)
    if pending is None:
        pending = session.info[_KICKS] = set()
        sa_event.listen(session, "after_commit", _send_kicks)
        sa_event.listen(session, "after_rollback", _forget_kicks)
    pending.add(run_id)


def _send_kicks(session: Session) -> None:
    pending: set[uuid.UUID] = session.info[_KICKS]
    run_ids = sorted(pending)
    pending.clear()
    if run_ids:
        kicks.kicker()(run_ids)


def _forget_kicks(session: Session) -> None:
    session.info[_KICKS].clear()
