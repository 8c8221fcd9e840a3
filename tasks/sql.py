"""The SQL of the drain, in one place. Every value is a bound parameter.

Arrays are passed whole (``= ANY(:ids)``, ``unnest(...)``) so one statement serves a batch of
any size: the hot path never issues a statement per event.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text

# Step 1a. FOR KEY SHARE on the run first: a cascading DELETE FROM runs in progress makes us skip
# the run (and an in-progress drain makes the delete wait), so the drain and the delete never
# take their row locks in opposite orders. Producers' counter updates do not conflict with it.
LOCK_RUNS = text(
    "SELECT id FROM runs WHERE id = ANY(CAST(:run_ids AS uuid[]))"
    " ORDER BY id FOR KEY SHARE SKIP LOCKED"
)

# Step 1b. The drain cursor: one drainer per run at a time, the others skip.
LOCK_CURSORS = text(
    "SELECT run_id, next_seq, status, attempts FROM run_outbox"
    " WHERE run_id = ANY(CAST(:run_ids AS uuid[]))"
    " ORDER BY run_id FOR UPDATE SKIP LOCKED"
)

# Tells a run that another transaction holds ("locked") from one that does not exist.
EXISTING_RUNS = text("SELECT id FROM runs WHERE id = ANY(CAST(:run_ids AS uuid[]))")

# Step 2. Up to :batch_size events per run from its cursor, in seq order, cut short once the
# run's batch holds :max_bytes of type and payload (the first event always goes, whatever its
# size). The inner LIMIT comes before the window so only the batch's rows are ever read.
READ_BATCH = text(
    """
    SELECT c.run_id, b.id, b.seq, b.type, b.payload, b.fetched
    FROM unnest(CAST(:run_ids AS uuid[]), CAST(:next_seqs AS bigint[])) AS c(run_id, next_seq)
    CROSS JOIN LATERAL (
        SELECT w.id, w.seq, w.type, w.payload, count(*) OVER () AS fetched,
               sum(w.size) OVER (ORDER BY w.seq) - w.size AS bytes_before
        FROM (
            SELECT t.*, octet_length(t.type) + octet_length(t.payload) AS size
            FROM (
                SELECT e.id, e.seq, e.type, CAST(e.payload AS text) AS payload
                FROM run_events AS e
                WHERE e.run_id = c.run_id AND e.seq >= c.next_seq
                ORDER BY e.seq
                LIMIT :batch_size
            ) AS t
        ) AS w
    ) AS b
    WHERE b.bytes_before < :max_bytes
    ORDER BY c.run_id, b.seq
    """
)

# Step 4, in one statement: mark the batch published and advance the cursors. Update-if-exists:
# rows deleted meanwhile are simply not updated.
MARK_PUBLISHED = text(
    """
    WITH marked AS (
        UPDATE run_events SET published_at = now()
        WHERE id = ANY(CAST(:event_ids AS bigint[])) AND published_at IS NULL
    )
    UPDATE run_outbox AS o
    SET next_seq = c.next_seq, attempts = 0, last_error = NULL, retry_at = NULL,
        last_published_at = now(), updated_at = now()
    FROM unnest(CAST(:run_ids AS uuid[]), CAST(:next_seqs AS bigint[])) AS c(run_id, next_seq)
    WHERE o.run_id = c.run_id
    """
)

# The sink refused these runs' entries: one more attempt each, retried by dispatch after its
# delay (jittered backoff, computed by tasks.retry), parked once attempts reach :max_attempts.
RECORD_REFUSALS = text(
    """
    UPDATE run_outbox AS o
    SET attempts = o.attempts + 1, last_error = c.error, updated_at = now(),
        retry_at = now() + make_interval(secs => c.delay),
        status = CASE WHEN o.attempts + 1 >= :max_attempts THEN 'stalled' ELSE o.status END
    FROM unnest(CAST(:run_ids AS uuid[]), CAST(:errors AS text[]), CAST(:delays AS float8[]))
        AS c(run_id, error, delay)
    WHERE o.run_id = c.run_id
    RETURNING o.run_id, o.status
    """
)

# An entry id of these runs is taken by another event: retrying cannot help, so park at once.
PARK = text(
    """
    UPDATE run_outbox AS o
    SET status = 'stalled', last_error = c.error, updated_at = now()
    FROM unnest(CAST(:run_ids AS uuid[]), CAST(:errors AS text[])) AS c(run_id, error)
    WHERE o.run_id = c.run_id
    """
)

# The sink was unavailable: nobody's fault, so it is noted but does not count towards parking.
RECORD_OUTAGE = text(
    "UPDATE run_outbox SET last_error = :error, updated_at = now()"
    " WHERE run_id = ANY(CAST(:run_ids AS uuid[]))"
)

_RESUME = (
    "UPDATE run_outbox SET status = 'active', attempts = 0, last_error = NULL, retry_at = NULL,"
    " updated_at = now() WHERE {which} RETURNING run_id"
)
RESUME = text(_RESUME.format(which="run_id = ANY(CAST(:run_ids AS uuid[])) AND status = 'stalled'"))
RESUME_ALL = text(_RESUME.format(which="status = 'stalled'"))

# Runs with events committed at or after their (new) cursor: checked after a short batch, since
# a producer may have committed while the run was locked and its kick found it "locked".
RUNS_WITH_MORE = text(
    """
    SELECT c.run_id
    FROM unnest(CAST(:run_ids AS uuid[]), CAST(:next_seqs AS bigint[])) AS c(run_id, next_seq)
    WHERE EXISTS (SELECT 1 FROM run_events AS e WHERE e.run_id = c.run_id AND e.seq >= c.next_seq)
    """
)

# The runs with unpublished events, as the recursive CTE ``pending``: a skip scan of the
# partial index of pending events, one index probe per run, whatever the size of the history.
# ``{after}`` starts it after a run id (or is empty). Dispatch and the metrics both use it.
_PENDING_RUNS = """
    pending(run_id) AS (
        (
            SELECT run_id FROM run_events WHERE published_at IS NULL {after}
            ORDER BY run_id LIMIT 1
        )
        UNION ALL
        SELECT (
            SELECT e.run_id FROM run_events AS e
            WHERE e.published_at IS NULL AND e.run_id > p.run_id
            ORDER BY e.run_id LIMIT 1
        )
        FROM pending AS p
        WHERE p.run_id IS NOT NULL
    )"""

# Active runs with unpublished events and no retry delay pending.
_FIND_PENDING = (
    "WITH RECURSIVE"
    + _PENDING_RUNS
    + """
    SELECT p.run_id FROM pending AS p
    CROSS JOIN LATERAL (
        SELECT 1 FROM run_outbox AS o
        WHERE o.run_id = p.run_id AND o.status = 'active' {due}
        LIMIT 1
    ) AS active
    LIMIT :limit
"""
)
_FIND_PENDING_VARIANTS = {
    (after, due_only): text(
        _FIND_PENDING.format(
            after="AND run_id > :after" if after else "",  # the next page, in run id order
            due="AND (o.retry_at IS NULL OR o.retry_at <= now())" if due_only else "",
        )
    )
    for after in (False, True)
    for due_only in (False, True)
}


def find_pending(*, after: bool, due_only: bool) -> TextClause:
    """The query of pending runs: from the first or after :after; every run or only due ones."""
    return _FIND_PENDING_VARIANTS[after, due_only]


FIND_PENDING = find_pending(after=False, due_only=True)  # what dispatch runs

# What `outbox status` shows: per run with pending events or parked, the backlog and its age.
STATUS = text(
    """
    SELECT o.run_id, o.status, o.attempts, o.last_error, o.next_seq, o.retry_at,
           count(e.id) AS pending, min(e.created_at) AS oldest_pending
    FROM run_outbox AS o
    LEFT JOIN run_events AS e ON e.run_id = o.run_id AND e.published_at IS NULL
    WHERE o.status = 'stalled'
       OR o.run_id IN (SELECT run_id FROM run_events WHERE published_at IS NULL)
    GROUP BY o.run_id
    ORDER BY min(e.created_at) NULLS LAST, o.run_id
    LIMIT :limit
    """
)

# The sink's health, one row shared by every worker (see tasks.outages).
SINK_HEALTH = text(
    "SELECT down_since, last_error, probes, next_probe_at <= now() AS probe_due"
    " FROM sink_health WHERE id = 1"
)
# Returns a row only for the caller that found the sink up: it logs that the outage began.
SINK_DOWN = text(
    "UPDATE sink_health SET down_since = now(), last_error = :error, probes = 0,"
    " next_probe_at = now() + make_interval(secs => :delay), updated_at = now()"
    " WHERE id = 1 AND down_since IS NULL RETURNING down_since"
)
# Returns a row only for the one dispatcher whose probe is due: the others keep waiting.
CLAIM_PROBE = text(
    "UPDATE sink_health SET probes = probes + 1,"
    " next_probe_at = now() + make_interval(secs => :delay), updated_at = now()"
    " WHERE id = 1 AND down_since IS NOT NULL AND probes = :probes AND next_probe_at <= now()"
    " RETURNING probes"
)
SINK_STILL_DOWN = text(
    "UPDATE sink_health SET last_error = :error, updated_at = now()"
    " WHERE id = 1 AND down_since IS NOT NULL"
)
# Returns a row only for the caller that ended the outage: it logs how long it lasted.
SINK_UP = text(
    "UPDATE sink_health SET down_since = NULL, probes = 0, next_probe_at = NULL,"
    " updated_at = now() FROM (SELECT down_since FROM sink_health WHERE id = 1) AS s"
    " WHERE sink_health.id = 1 AND s.down_since IS NOT NULL"
    " RETURNING extract(epoch FROM now() - s.down_since) AS seconds"
)

# Retention (tasks.purge). The cutoff comes from the database's clock, the clock that set
# published_at, so a worker whose clock runs fast cannot shorten the retention window.
PURGE_CUTOFF = text("SELECT now() - make_interval(secs => :seconds)")

# What the purge may delete: published before :cutoff and below the run's cursor. A published
# event at or past the cursor is kept: the drain is about to read it again.
_PURGEABLE = """
    e.published_at < :cutoff
    AND e.seq < (SELECT o.next_seq FROM run_outbox AS o WHERE o.run_id = e.run_id)
"""

# One purge batch, one short transaction: up to :batch_size purgeable events, oldest first
# through ix_run_events_published_at (never a scan of the table), deleted by primary key.
# Why producers and drains never wait for it, nor it for them:
# * its rows are published and below their run's cursor. Producers only insert new rows, and
#   drains only update unpublished rows at or past the cursor, so nobody else locks them; the
#   exceptions, a cascading run delete or another purge, hold rows that SKIP LOCKED passes over.
# * it locks no `runs` or `run_outbox` row, so a producer holding its run's counter or a drain
#   holding its run's cursor is not in its way, and it is not in theirs.
# * it reads the cursor without a lock, which is safe because published_at is set once (from
#   NULL) and next_seq only moves forward: a stale cursor is behind the truth, and the purge
#   keeps more, never less.
PURGE_BATCH = text(
    f"""
    WITH gone AS (
        DELETE FROM run_events
        WHERE id = ANY(ARRAY(
            SELECT e.id FROM run_events AS e
            WHERE {_PURGEABLE}
            ORDER BY e.published_at
            LIMIT :batch_size
            FOR UPDATE OF e SKIP LOCKED
        ))
        RETURNING 1
    )
    SELECT count(*) FROM gone
    """
)

# What a dry run reports: every purgeable event, counted through the same index.
PURGE_COUNT = text(f"SELECT count(*) FROM run_events AS e WHERE {_PURGEABLE}")

# `outbox verify` and `outbox replay` (tasks.verify, tasks.replay). A run is compared (or
# replayed) while its cursor row is held, so no drain adds to its stream meanwhile: verify
# shares the row (FOR KEY SHARE: the drain's FOR UPDATE SKIP LOCKED skips the run, other
# verifies and the producers' counter row are not in its way); replay holds it alone. Both
# wait for a drain's batch to end, up to the transaction's own lock_timeout.
VERIFY_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :timeout, true)")
VERIFY_HOLD_SHARED = text(
    "SELECT next_seq FROM run_outbox WHERE run_id = :run_id FOR KEY SHARE OF run_outbox"
)
VERIFY_HOLD_EXCLUSIVE = text(
    "SELECT next_seq FROM run_outbox WHERE run_id = :run_id FOR UPDATE OF run_outbox"
)

# A page of a run's published events (below its cursor), as the drain publishes them, cut
# once the page holds :max_bytes of type and payload (the first event always comes); the
# inner LIMIT keeps the read to one page of the (run_id, seq) index.
VERIFY_PUBLISHED = text(
    """
    SELECT w.id, w.seq, w.type, w.payload
    FROM (
        SELECT t.*, sum(t.size) OVER (ORDER BY t.seq) - t.size AS bytes_before
        FROM (
            SELECT p.*, octet_length(p.type) + octet_length(p.payload) AS size
            FROM (
                SELECT e.id, e.seq, e.type, CAST(e.payload AS text) AS payload
                FROM run_events AS e
                WHERE e.run_id = :run_id AND e.seq > :after AND e.seq < :below
                ORDER BY e.seq
                LIMIT :limit
            ) AS p
        ) AS t
    ) AS w
    WHERE w.bytes_before < :max_bytes
    ORDER BY w.seq
    """
)

# A run's events at given seqs: what entries found above the cursor are compared with.
VERIFY_EVENTS_AT = text(
    "SELECT id, seq, type, CAST(payload AS text) AS payload FROM run_events"
    " WHERE run_id = :run_id AND seq = ANY(CAST(:seqs AS bigint[])) ORDER BY seq"
)

# Every run, a page at a time in id order (`verify --all`), and how many there are.
VERIFY_RUNS = text("SELECT run_id FROM run_outbox ORDER BY run_id LIMIT :limit")
VERIFY_RUNS_AFTER = text(
    "SELECT run_id FROM run_outbox WHERE run_id > :after ORDER BY run_id LIMIT :limit"
)
VERIFY_COUNT_RUNS = text("SELECT count(*) FROM run_outbox")

# The gauges of `outbox metrics` (tasks.metrics), read at each scrape in one statement, under
# the transaction's own statement_timeout (a scrape gives up long before the session's 60 s).
# Its cost follows the backlog, never the history (EXPLAIN ANALYZE with 500,000 published and
# 100 pending events of 20 runs: 0.7 ms, index scans only, no scan of either table):
# * pending events and the oldest one's age: a bitmap scan of the partial index of pending
#   events, ix_run_events_pending, and the heap pages of those rows only;
# * runs with pending events: the skip scan dispatch uses (one index probe per run);
# * parked runs: those runs' cursors, looked up one by one by primary key. A run is parked
#   only when its batch failed, so a parked run always has pending events;
# * the sink's outage: the one row of sink_health (NULL while the sink is up).
METRICS_TIMEOUT = text("SELECT set_config('statement_timeout', :timeout, true)")
METRICS = text(
    "WITH RECURSIVE"
    + _PENDING_RUNS.format(after="")
    + """,
    backlog AS (
        SELECT count(*) AS events, min(created_at) AS oldest
        FROM run_events WHERE published_at IS NULL
    )
    SELECT
        b.events AS pending_events,
        coalesce(extract(epoch FROM now() - b.oldest), 0) AS oldest_pending_age,
        (SELECT count(*) FROM pending AS p WHERE p.run_id IS NOT NULL) AS pending_runs,
        (
            SELECT count(*) FROM pending AS p
            CROSS JOIN LATERAL (
                SELECT 1 FROM run_outbox AS o
                WHERE o.run_id = p.run_id AND o.status = 'stalled'
                LIMIT 1
            ) AS parked
        ) AS stalled_runs,
        (SELECT extract(epoch FROM now() - h.down_since) FROM sink_health AS h WHERE h.id = 1)
            AS sink_down_seconds
    FROM backlog AS b
    """
)
