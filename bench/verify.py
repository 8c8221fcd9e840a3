"""Exactly once, in order: check every stream against the database after each run.

For each run the database says how far it was published (``run_outbox.next_seq - 1``); its
stream must hold exactly seqs 1..that, once each, in order, and the database must agree with
itself (an event is marked published if and only if it is below its run's cursor). A complete
run must also have published everything (``next_seq = last_seq + 1``).

Every writer uses explicit ids ``<seq>-0`` and Redis keeps a stream's ids strictly increasing,
so XLEN plus the first and last ids already prove "1..n once, in order". The full check reads
every entry back and also checks each payload belongs to its run and seq.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import redis

from bench import env as bench_env
from bench.measure import BenchError

_CURSORS = """
SELECT r.id, r.last_seq, o.next_seq FROM runs AS r JOIN run_outbox AS o ON o.run_id = r.id
"""
# Rows whose published flag disagrees with their run's cursor.
_INCONSISTENT = """
SELECT count(*) FROM run_events AS e JOIN run_outbox AS o ON o.run_id = e.run_id
WHERE (e.published_at IS NOT NULL) <> (e.seq < o.next_seq)
"""
_CHUNK = 500


class VerificationError(BenchError):
    """A stream or the database does not hold what exactly-once, in-order delivery requires."""


def verify(
    conn: psycopg.Connection,
    client: redis.Redis,
    env: bench_env.BenchEnv,
    *,
    complete: bool,
    full: bool,
    check_payloads: bool = True,
    run_ids: list[uuid.UUID] | None = None,
) -> int:
    """Check every run's stream and cursor (or only ``run_ids``'); return the entries checked.

    Raises VerificationError naming the first run that is wrong.
    """
    cursors = [(rid, int(last), int(nxt)) for rid, last, nxt in conn.execute(_CURSORS)]
    if run_ids is not None:
        wanted = set(run_ids)
        cursors = [c for c in cursors if c[0] in wanted]
    row = conn.execute(_INCONSISTENT).fetchone()
    if row and row[0]:
        raise VerificationError(f"{row[0]} events' published_at disagree with their run's cursor")
    if complete:
        for rid, last, nxt in cursors:
            if nxt != last + 1:
                raise VerificationError(f"run {rid}: published {nxt - 1} of {last} events")
    checked = 0
    for start in range(0, len(cursors), _CHUNK):
        chunk = cursors[start : start + _CHUNK]
        if full:
            checked += _check_full(client, env, chunk, check_payloads)
        else:
            checked += _check_ends(client, env, chunk)
    return checked


def _check_ends(
    client: redis.Redis, env: bench_env.BenchEnv, chunk: list[tuple[uuid.UUID, int, int]]
) -> int:
    pipe = client.pipeline(transaction=False)
    for rid, _last, _next in chunk:
        key = env.stream_key(rid)
        pipe.xlen(key)
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
    replies: list[Any] = pipe.execute()
    for index, (rid, _last, nxt) in enumerate(chunk):
        length, first, last = replies[3 * index : 3 * index + 3]
        expected = nxt - 1
        ids = (first[0][0] if first else None, last[0][0] if last else None)
        want = (b"1-0", f"{expected}-0".encode()) if expected else (None, None)
        if length != expected or ids != want:
            raise VerificationError(
                f"run {rid}: stream has {length} entries {ids}, expected 1..{expected}"
            )
    return sum(nxt - 1 for _rid, _last, nxt in chunk)


def _check_full(
    client: redis.Redis,
    env: bench_env.BenchEnv,
    chunk: list[tuple[uuid.UUID, int, int]],
    check_payloads: bool,
) -> int:
    pipe = client.pipeline(transaction=False)
    for rid, _last, _next in chunk:
        pipe.xrange(env.stream_key(rid))
    checked = 0
    for (rid, _last, nxt), entries in zip(chunk, pipe.execute(), strict=True):
        seqs = [entry_id for entry_id, _fields in entries]
        if seqs != [f"{seq}-0".encode() for seq in range(1, nxt)]:
            raise VerificationError(
                f"run {rid}: stream ids {_summary(seqs)}, expected 1-0..{nxt - 1}-0 once each"
            )
        for seq, (_id, fields) in enumerate(entries, start=1):
            if b"type" not in fields or b"payload" not in fields:
                raise VerificationError(f"run {rid} seq {seq}: fields {sorted(fields)}")
            if check_payloads:
                payload = json.loads(fields[b"payload"])
                if payload.get("seq") != seq or payload.get("run") != str(rid):
                    raise VerificationError(f"run {rid} seq {seq}: payload of another event")
        checked += len(entries)
    return checked


def _summary(ids: list[bytes]) -> str:
    shown = [i.decode() for i in ids[:5]]
    return f"{shown}{' ...' if len(ids) > 5 else ''} ({len(ids)} entries)"
