"""`outbox replay --rebuild` and `--all-lost` against real PostgreSQL and Redis.

A plain replay cannot put back entries at or below a stream's last id. A rebuild deletes the
stream's key and publishes every published event again, from the first, while it holds the
run's cursor row, so no drain publishes meanwhile; it never deletes a stream that holds
anything but the run's own entries.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import append_event, create_run
from tasks import api, runtime
from tasks.drain import Status
from tasks.pg import SqlLedger
from tasks.redis_sink import RedisStreamReader
from tasks.replay import rebuild_run
from tasks.settings import Settings
from tests.helpers import append, cli, entries, key, published, stream_seqs
from tests.servers import redis_server


def verified_clean(run_id: uuid.UUID | None = None) -> bool:
    checked = cli("verify", run_id) if run_id is not None else cli("verify", "--all")
    return checked.exit_code == 0 and "all match" in checked.stdout


def test_a_stream_that_lost_its_front_under_later_entries_is_rebuilt_exactly_once_in_order(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=4)
    before = entries(outbox, run_id)
    redis_client.delete(key(outbox, run_id))  # as a restart without persistence loses it
    append(Session, run_id, 2)
    assert api.drain_outbox_for_run(run_id).published == 2  # 5-0 and 6-0: the front is below
    plain = cli("replay", run_id)
    assert plain.exit_code == 1
    assert plain.stderr.startswith(f"Error: could not restore seqs 1-4 of run {run_id}: ")

    rebuilt = cli("replay", run_id, "--rebuild")

    assert (rebuilt.exit_code, rebuilt.stdout, rebuilt.stderr) == (
        0,
        f"{run_id}: rebuilt, 2 entries removed with the old stream, added 6\n",
        "",
    )
    after = entries(outbox, run_id)
    assert after[:4] == before  # the same ids, types, payloads and event ids as first written
    assert [e.seq for e in after] == [1, 2, 3, 4, 5, 6]
    assert verified_clean(run_id)
    again = cli("replay", run_id)  # nothing left to put back
    assert (again.exit_code, again.stdout) == (0, f"{run_id}: added 0, 6 already present\n")


def test_a_rebuild_republishes_a_front_that_consumers_trimmed_and_drops_their_groups(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=5)
    stream = key(outbox, run_id)
    redis_client.xgroup_create(stream, "readers", id="0")
    redis_client.xtrim(stream, maxlen=2, approximate=False)

    rebuilt = cli("replay", run_id, "--rebuild")

    assert rebuilt.stdout == f"{run_id}: rebuilt, 2 entries removed with the old stream, added 5\n"
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2, 3, 4, 5]
    assert redis_client.xinfo_groups(stream) == []  # the groups went with the old key


def test_a_drain_skips_the_run_while_its_rebuild_holds_the_cursor_and_publishes_after_it(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=3)
    append(Session, run_id, 1)  # seq 4, pending while the stream is rebuilt
    statuses: list[str] = []

    def erase_then_drain(run: uuid.UUID) -> None:
        redis_client.delete(key(outbox, run))
        statuses.append(api.drain_outbox_for_run(run).status)  # another transaction

    reader = RedisStreamReader(outbox.redis, outbox.settings.stream_prefix)
    result = rebuild_run(SqlLedger(Session), reader, outbox.sink, erase_then_drain, run_id)

    assert statuses == [Status.LOCKED]
    assert (result.complete, result.rebuilt, result.removed, result.added) == (True, True, 3, 3)
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2, 3]
    assert api.drain_outbox_for_run(run_id).published == 1  # the pending event, after it
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2, 3, 4]
    assert verified_clean(run_id)


def test_a_rebuild_leaves_a_stream_holding_another_runs_events_as_it_is(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=3)
    old = entries(outbox, run_id)
    with Session() as session, session.begin():  # the run is deleted and created again
        session.execute(text("DELETE FROM runs WHERE id = :id"), {"id": run_id})
    with Session() as session, session.begin():
        create_run(session, run_id)
        for n in range(1, 3):
            append_event(session, run_id, "again", {"n": n})

    rebuilt = cli("replay", run_id, "--rebuild")

    assert (rebuilt.exit_code, rebuilt.stdout) == (1, f"{run_id}: added 0, 0 already present\n")
    assert rebuilt.stderr == (
        f"Error: replay of run {run_id} stopped: the stream holds entries the publisher did "
        "not write at 1-3 (was a run with this id deleted and created again?), so it was not "
        "deleted. Move or delete the stream, then replay again\n"
    )
    assert entries(outbox, run_id) == old


def test_all_lost_rebuilds_every_stream_a_restart_without_persistence_lost_and_no_other(
    Session: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as server:
        client = server.client()
        private = dataclasses.replace(settings, redis_url=server.url)
        current = runtime.configure(private, session_factory=Session, redis_client=client)
        lost_front, lost_all = sorted(published(Session, runs=2, events=3))
        server.stop()
        server.start()  # --save "" --appendonly no: it comes back empty
        [kept] = published(Session, events=2)  # written after the restart: intact
        client.xgroup_create(key(current, kept), "readers", id="0")
        append(Session, lost_front, 2)
        assert api.drain_outbox_for_run(lost_front).published == 2  # 4-0 and 5-0 only

        plain = cli("replay", "--all-lost")
        assert plain.exit_code == 1
        assert plain.stdout.splitlines() == [
            f"{lost_front}: added 0, 2 already present",
            f"{lost_all}: added 3, 0 already present",
            "verified 3 runs: 2 streams missed events, 1 restored; 3 entries added",
        ]
        rebuilt = cli("replay", "--all-lost", "--rebuild")

        assert (rebuilt.exit_code, rebuilt.stderr) == (0, "")
        assert rebuilt.stdout.splitlines() == [
            f"{lost_front}: rebuilt, 2 entries removed with the old stream, added 5",
            "verified 3 runs: 1 stream missed events, 1 restored; 5 entries added",
        ]
        assert stream_seqs(client, private.stream_prefix, lost_front) == [1, 2, 3, 4, 5]
        assert stream_seqs(client, private.stream_prefix, lost_all) == [1, 2, 3]
        assert len(client.xinfo_groups(key(current, kept))) == 1  # its stream was not touched
        assert verified_clean()


def test_rebuild_and_all_lost_refuse_options_that_do_not_go_together(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=2)
    redis_client.delete(key(outbox, run_id))
    hint = "See 'outbox replay --help'."

    for args, message in (
        (
            (run_id, "--rebuild", "--from-seq", 2),
            "--from-seq goes with a plain replay of one run only",
        ),
        (("--all-lost", "--from-seq", 1), "--from-seq goes with a plain replay of one run only"),
        ((run_id, "--all-lost"), "give either a RUN_ID or --all-lost, not both"),
        (("--rebuild",), "Missing argument 'RUN_ID'"),
    ):
        result = cli("replay", *args)
        assert (result.exit_code, result.stdout) == (2, ""), args
        assert result.stderr == f"Error: {message}. {hint}\n", args
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == []
