"""The producer API: create runs and append their events inside the caller's transaction."""

from __future__ import annotations

import json
import os
import re
import uuid

from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
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
    if _NUL_ESCAPE.search(encoded):
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

    Raises InvalidRunId for a malformed ``run_id`` and RunExists for one already taken.
    """
    rid = uuid.uuid4() if run_id is None else parse_run_id(run_id)
    if run_id is not None and session.get(Run, rid) is not None:
        raise errors.RunExists(f"a run with id {rid} exists already")
    run = Run(id=rid, last_seq=0)
    run.outbox = RunOutbox(run_id=run.id)
    if run_id is None:
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
    kicker is registered (see ``models.kicks``).
    """
    rid = parse_run_id(run_id)
    kick = kick_by_default() if kick is None else kick
    if kick:
        kicks.kicker()  # fail before writing if a kick cannot be sent
    check_type(type)
    encoded = encode_payload(payload, max_payload_bytes() if max_bytes is None else max_bytes)
    row = session.execute(_APPEND, {"run_id": rid, "type": type, "payload": encoded}).one_or_none()
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
