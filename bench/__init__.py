"""Benchmark harness of the outbox publisher: ``python -m bench`` (``--quick`` for CI).

Run from the repository root against local PostgreSQL and Redis (defaults: 127.0.0.1:5432 as
role ``postgres``, 127.0.0.1:6379); matplotlib is needed for the charts. The bench creates its
own database ``outbox_bench_<hex>`` (migrated with the project's migrations) and uses its own
Redis keys under ``outbox-bench:<hex>:``, and removes both at the end, also on failure or
Ctrl-C.

Implementations, run on identical seeded data, interleaved, median of ``--reps`` (default 3):

1. ``project-e2e``: real ``celery -A tasks worker --pool=prefork --concurrency=N`` subprocesses
   (``--workers``, default 2) fed by ``outbox.dispatch`` every second, timed from the first
   dispatch (all events committed) until no event is unpublished;
   ``project-inproc``: ``drain_outbox_once()`` in a loop in the bench process, no broker;
2. ``ideal``: the machine's practical limit, plain psycopg + redis-py, N processes (see
   bench/relays.py);
3. ``per-row``: one event per transaction, N processes, the design the project replaces
   (time-capped per repetition at full size; its rate is over what it moved).

Workloads (``--only``): ``deep`` (100 runs x 2,000 events pending), ``wide`` (20,000 x 10),
``latency`` (1,000 events/s for 60 s over 500 runs, kick on commit and beat alone, then the
kick at 250 events/s, where the machine is not saturated; p50, p99, max of commit-to-stream),
``history`` (dispatch and drain of 1,000 pending events without and with 2,000,000 published),
``memory`` (pool-process RSS while draining 1,000,000 events).
``--quick`` runs each at smoke size in about two minutes.

Output: a table on stdout with PASS/MISS per target of the issue, ``<out>/results.json`` and
``<out>/throughput.png``, ``latency.png``, ``memory.png`` (``--out``, default bench-results/).
A missed target does not fail the run; wrong stream contents or a crash exit with status 1.
"""
