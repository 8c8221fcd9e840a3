"""Fast, identical data for every implementation: server-side bulk inserts and a full reset.

Seeding is one ``INSERT ... SELECT FROM generate_series`` per table, so 200,000 events take a
second or two instead of minutes through the producer API. The state it leaves is exactly what
``create_run`` plus ``append_event`` would leave: ``runs.last_seq`` is the run's event count,
``run_outbox.next_seq`` is 1 (or past the end for already-published history), events are
gapless from seq 1.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence

import psycopg
import redis

from bench import env as bench_env

EVENT_TYPE = "bench"
PAYLOAD_BYTES = 200
# jsonb prints {"pad": "<pad>", "run": "<uuid>", "seq": <n>}: 67 bytes plus the pad plus the
# digits of seq; sized for 4-digit seqs so payloads are ~200 bytes as stored and as published.
_PAYLOAD_OVERHEAD = 67 + 4

_INSERT_RUNS = """
INSERT INTO runs (id, last_seq) SELECT r.id, %(events)s FROM unnest(%(ids)s::uuid[]) AS r(id)
"""
_INSERT_CURSORS = """
INSERT INTO run_outbox (run_id, next_seq, last_published_at)
SELECT r.id, %(next_seq)s, CASE WHEN %(published)s THEN now() END
FROM unnest(%(ids)s::uuid[]) AS r(id)
"""
# Seq-major order (every run's seq 1, then every run's seq 2, ...): events of concurrent runs
# interleave on disk as they would when produced over time, rather than each run's events
# sitting together, which would flatter every reader.
_INSERT_EVENTS = """
INSERT INTO run_events (run_id, seq, type, payload, published_at)
SELECT r.id, s.seq, %(type)s,
       jsonb_build_object('run', r.id, 'seq', s.seq, 'pad', repeat('x', %(pad)s)),
       CASE WHEN %(published)s THEN now() END
FROM generate_series(1, %(events)s) AS s(seq)
CROSS JOIN LATERAL unnest(%(ids)s::uuid[]) AS r(id)
"""


def make_run_ids(count: int, seed: str) -> list[uuid.UUID]:
    """Return ``count`` run ids, the same ones for the same ``seed`` (so runs are comparable)."""
    rng = random.Random(seed)
    return [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(count)]


def seed_runs(
    conn: psycopg.Connection,
    run_ids: Sequence[uuid.UUID],
    events: int,
    *,
    published: bool = False,
    payload_bytes: int = PAYLOAD_BYTES,
    chunk: int = 500,
) -> int:
    """Insert ``run_ids`` with ``events`` events each (pending, or already ``published``).

    Events are committed every ``chunk`` runs, so a multi-million-row history does not build
    one huge transaction. Returns the number of events inserted.
    """
    params: dict[str, object] = {
        "ids": list(run_ids),
        "events": events,
        "next_seq": events + 1 if published else 1,
        "published": published,
        "pad": max(payload_bytes - _PAYLOAD_OVERHEAD, 0),
        "type": EVENT_TYPE,
    }
    with conn.transaction():
        conn.execute(_INSERT_RUNS, params)
        conn.execute(_INSERT_CURSORS, params)
    # Fresh statistics before the events go in: the foreign key check of every event row looks
    # its run up with a plan made from them, and a plan made when runs held ten rows (a seq
    # scan) makes inserting into 20,000 runs quadratic.
    conn.execute("ANALYZE runs, run_outbox")
    if events:
        for start in range(0, len(run_ids), chunk):
            with conn.transaction():
                conn.execute(_INSERT_EVENTS, params | {"ids": list(run_ids[start : start + chunk])})
    return len(run_ids) * events


def truncate(conn: psycopg.Connection) -> None:
    """Empty the three outbox tables."""
    conn.execute("TRUNCATE run_events, run_outbox, runs")


def settle(conn: psycopg.Connection) -> None:
    """VACUUM ANALYZE and CHECKPOINT, so every repetition starts from the same state.

    Fresh statistics keep the planner on the partial index; the vacuum sets hint bits and the
    visibility map now instead of during the timed run (and leaves autovacuum nothing to start
    mid-run for the inserts); the checkpoint keeps the previous run's dirty pages from being
    written out during the next one.
    """
    conn.execute("VACUUM (ANALYZE) runs, run_events, run_outbox")
    conn.execute("CHECKPOINT")


def reset(conn: psycopg.Connection, client: redis.Redis, env: bench_env.BenchEnv) -> None:
    """Remove every run, event, stream and queued-drain mark of the bench."""
    truncate(conn)
    bench_env.delete_matching(client, env.stream_prefix)
    bench_env.delete_matching(client, env.queued_prefix)


def reseed(
    conn: psycopg.Connection,
    client: redis.Redis,
    env: bench_env.BenchEnv,
    run_ids: Sequence[uuid.UUID],
    events: int,
) -> int:
    """Reset, seed ``run_ids`` with ``events`` pending events each, settle; return the count."""
    reset(conn, client, env)
    total = seed_runs(conn, run_ids, events)
    settle(conn)
    return total
