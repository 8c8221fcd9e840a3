"""`outbox verify` and `outbox replay` against real PostgreSQL and Redis.

Streams lose entries in the ways a deployment meets: XDEL, a deleted key, a private
redis-server restarted without persistence; or hold what they should not: an entry above the
cursor, another payload, an old run's entries. Verify reports each exactly, replay puts back
what Redis lets it, exactly once, and the CLI and the tasks keep their exit codes and forms.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models import InvalidRunId, UnknownRun, append_event, create_run
from models.errors import InvalidTaskArguments
from tasks import api, runtime
from tasks.outbox import replay, verify
from tasks.pg import SqlLedger
from tasks.redis_sink import RedisStreamReader, stream_key
from tasks.settings import Settings
from tasks.verify import verify_all, verify_run
from tests.helpers import cli, entries, key, published, seed, stream_seqs
from tests.servers import redis_server

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
REPLAY_HINT = "`outbox replay RUN_ID` puts missing entries back"
ONE_WRONG = f"Error: 1 run's stream does not match the database; {REPLAY_HINT}\n"


def xadd(client: redis.Redis, stream: str, entry_id: str, type_: str, payload: str) -> None:
    client.xadd(stream, {"type": type_, "payload": payload, "event": "0"}, id=entry_id)


def summary_line(runs: int, events: int, wrong: int = 0, **counts: int) -> str:
    head = f"verified {runs} run{'' if runs == 1 else 's'} and {events} published events: "
    if not wrong:
        return head + "all match"
    missing, differ, extra = (counts.get(k, 0) for k in ("missing", "differ", "extra"))
    runs_wrong = f"{wrong} run{'' if wrong == 1 else 's'} wrong"
    return head + f"{runs_wrong} ({missing} missing, {differ} differ, {extra} extra)"


def lines(*texts: str) -> str:
    return "".join(f"{t}\n" for t in texts)


def test_fully_published_runs_verify_clean_one_at_a_time_and_all_together(
    Session: sessionmaker[Session], outbox: runtime.Runtime
) -> None:
    first, _ = published(Session, runs=2, events=3)

    one, every = cli("verify", first), cli("verify", "--all")

    assert (one.exit_code, one.stdout, one.stderr) == (0, lines(summary_line(1, 3)), "")
    assert (every.exit_code, every.stdout, every.stderr) == (0, lines(summary_line(2, 6)), "")


def test_entries_deleted_with_xdel_are_reported_missing_exactly_and_replay_cannot_refill_them(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=8)
    redis_client.xdel(key(outbox, run_id), "3-0", "4-0", "7-0")

    checked = cli("verify", run_id)

    assert (checked.exit_code, checked.stderr) == (1, ONE_WRONG)
    assert checked.stdout == lines(
        f"{run_id}: missing 3-4, 7", summary_line(1, 8, wrong=1, missing=3)
    )
    # Redis adds entries only above a stream's last id (8-0 here): replay says so.
    replayed = cli("replay", run_id)
    assert (replayed.exit_code, replayed.stdout) == (1, f"{run_id}: added 0, 5 already present\n")
    assert replayed.stderr == (
        f"Error: could not restore seqs 3-4, 7 of run {run_id}: they are at or below the stream's "
        f"last id 8-0, and Redis adds entries only above it. Rebuild the stream with `outbox "
        f"replay {run_id} --rebuild`, which deletes it and writes it anew (its consumers then "
        "read it again from the start)\n"
    )
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2, 5, 6, 8]


def test_a_deleted_stream_is_reported_missing_and_replay_restores_it_exactly_once(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=5)
    before = entries(outbox, run_id)
    redis_client.delete(key(outbox, run_id))

    assert cli("verify", run_id).stdout.splitlines()[0] == f"{run_id}: missing 1-5"
    first, second = cli("replay", run_id), cli("replay", run_id)

    assert (first.exit_code, first.stdout, first.stderr) == (
        0,
        f"{run_id}: added 5, 0 already present\n",
        "",
    )
    assert (second.exit_code, second.stdout) == (0, f"{run_id}: added 0, 5 already present\n")
    assert entries(outbox, run_id) == before  # same ids, types, payloads and event ids
    assert cli("verify", run_id).stdout == lines(summary_line(1, 5))


def test_replay_from_a_seq_restores_only_from_there_and_the_rest_then_stays_below_the_top(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=5)
    redis_client.delete(key(outbox, run_id))

    later = cli("replay", run_id, "--from-seq", 3)
    everything = cli("replay", run_id)

    assert (later.exit_code, later.stdout) == (0, f"{run_id}: added 3, 0 already present\n")
    assert cli("verify", run_id).stdout.splitlines()[0] == f"{run_id}: missing 1-2"
    assert everything.exit_code == 1
    assert everything.stderr.startswith(f"Error: could not restore seqs 1-2 of run {run_id}: ")
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [3, 4, 5]


def test_a_redis_without_persistence_loses_every_stream_on_restart_and_replay_restores_them(
    Session: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as server:
        client = server.client()
        private = dataclasses.replace(settings, redis_url=server.url)
        current = runtime.configure(private, session_factory=Session, redis_client=client)
        run_ids = sorted(published(Session, runs=3, events=4))
        before = {run_id: entries(current, run_id) for run_id in run_ids}

        server.stop()
        server.start()  # --save "" --appendonly no: it comes back empty

        # The database saw nothing wrong.
        assert cli("status").stdout.splitlines()[1:] == ["nothing pending"]
        checked = cli("verify", "--all")
        assert (checked.exit_code, checked.stderr) == (
            1,
            f"Error: 3 runs' streams do not match the database; {REPLAY_HINT}\n",
        )
        assert checked.stdout == lines(
            *(f"{run_id}: missing 1-4" for run_id in run_ids),
            summary_line(3, 12, wrong=3, missing=12),
        )
        for run_id in run_ids:
            assert cli("replay", run_id).stdout == f"{run_id}: added 4, 0 already present\n"
            assert entries(current, run_id) == before[run_id]
        assert cli("verify", "--all").stdout == lines(summary_line(3, 12))


def test_an_entry_above_the_cursor_an_id_the_publisher_never_writes_and_another_payload(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=3)
    stream = key(outbox, run_id)
    good = entries(outbox, run_id)
    redis_client.delete(stream)
    redis_client.xadd(stream, {"type": good[0].type, "payload": good[0].payload}, id="1-0")
    xadd(redis_client, stream, "2-0", good[1].type, '{"n": 99}')
    redis_client.xadd(stream, {"type": good[2].type, "payload": good[2].payload}, id="3-0")
    xadd(redis_client, stream, "3-1", "stray", "{}")
    xadd(redis_client, stream, "5-0", "stray", "{}")

    checked = cli("verify", run_id)

    assert (checked.exit_code, checked.stderr) == (1, ONE_WRONG)
    assert checked.stdout == lines(
        f"{run_id}: differ 2 (first: 2-0 payload, event id differs); extra 3, 5",
        summary_line(1, 3, wrong=1, differ=1, extra=2),
    )


def test_replay_into_a_stream_holding_another_runs_events_reports_the_conflict_and_adds_nothing(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=3)
    old = entries(outbox, run_id)
    with Session() as session, session.begin():  # the run is deleted and created again
        session.execute(text("DELETE FROM runs WHERE id = :id"), {"id": run_id})
    with Session() as session, session.begin():
        create_run(session, run_id)
        for n in range(1, 5):
            append_event(session, run_id, "seeded", {"n": n})
    with Session() as session, session.begin():  # marked published, as if drained elsewhere
        session.execute(
            text("UPDATE run_outbox SET next_seq = 5 WHERE run_id = :id"), {"id": run_id}
        )

    checked, replayed = cli("verify", run_id), cli("replay", run_id)

    assert checked.stdout.splitlines()[0] == (
        f"{run_id}: missing 4; differ 1-3 (first: 1-0 event id differs)"
    )
    assert (replayed.exit_code, replayed.stdout) == (1, f"{run_id}: added 0, 0 already present\n")
    assert replayed.stderr == (
        f"Error: replay of run {run_id} stopped: entry 1-0 holds another event (event id "
        "differs; was a run with this id deleted and created again?). Move or delete the "
        "stream, then replay again\n"
    )
    assert entries(outbox, run_id) == old


def test_a_stream_trimmed_by_its_consumers_verifies_clean_and_replay_leaves_the_front_alone(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=6)
    redis_client.xtrim(key(outbox, run_id), maxlen=2, approximate=False)

    checked, replayed = cli("verify", run_id), cli("replay", run_id)

    assert (checked.exit_code, checked.stdout) == (
        0,
        lines(summary_line(1, 6) + "; 4 trimmed by consumers"),
    )
    assert (replayed.exit_code, replayed.stdout) == (
        0,
        f"{run_id}: added 0, 2 already present; below 5 trimmed by consumers, left alone\n",
    )
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [5, 6]


def test_events_purged_from_the_database_are_not_compared_nor_replayed(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=5)
    with Session() as session, session.begin():  # what the retention purge does
        session.execute(
            text("DELETE FROM run_events WHERE run_id = :id AND seq <= 2"), {"id": run_id}
        )
    redis_client.xdel(key(outbox, run_id), "4-0")

    report = verify_run(SqlLedger(Session), reader(outbox), run_id)
    assert (report.line(), report.unchecked, report.matched) == (f"{run_id}: missing 4", 2, 2)

    redis_client.delete(key(outbox, run_id))
    replayed = cli("replay", run_id)
    assert (replayed.exit_code, replayed.stdout) == (0, f"{run_id}: added 3, 0 already present\n")
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [3, 4, 5]
    assert cli("verify", run_id).stdout == lines(summary_line(1, 3))


def reader(current: runtime.Runtime) -> RedisStreamReader:
    return RedisStreamReader(current.redis, current.settings.stream_prefix)


def problems(run_ids: Sequence[uuid.UUID], redis_client: redis.Redis, prefix: str) -> None:
    """Damage some of the runs' streams, each in its own way."""
    redis_client.xdel(stream_key(prefix, run_ids[1]), "2-0")
    redis_client.delete(stream_key(prefix, run_ids[4]))
    xadd(redis_client, stream_key(prefix, run_ids[6]), "9-0", "stray", "{}")


def test_verify_all_pages_through_many_runs_and_long_streams_with_small_pages(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    run_ids = sorted(published(Session, runs=7, events=5))
    problems(run_ids, redis_client, outbox.settings.stream_prefix)
    ledger = SqlLedger(Session)
    seen: list[uuid.UUID] = []

    small = verify_all(
        ledger, reader(outbox), on_run=lambda r: seen.append(r.run_id), page_size=2,
        run_page_size=3,
    )  # fmt: skip
    large = verify_all(ledger, reader(outbox))

    assert seen == run_ids
    assert small.as_dict() == large.as_dict()
    assert [r.line() for r in small.problems] == [
        f"{run_ids[1]}: missing 2",
        f"{run_ids[4]}: missing 1-5",
        f"{run_ids[6]}: extra 9",
    ]
    assert (small.runs, small.events, small.matched, small.missing, small.extra) == (
        7,
        35,
        29,
        6,
        1,
    )


def test_a_drain_skips_a_run_while_verify_holds_it_and_a_locked_run_is_reported_busy(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=2)
    with Session() as session, session.begin():
        append_event(session, run_id, "later", {})

    with SqlLedger(Session).hold(run_id):
        assert api.drain_outbox_for_run(run_id).status == "locked"
        shared = verify_run(SqlLedger(Session), reader(outbox), run_id)  # verifies share it
    with SqlLedger(Session).hold(run_id, exclusive=True):  # as a replay holds it
        busy = verify_run(SqlLedger(Session, lock_timeout=0.2), reader(outbox), run_id)

    assert busy.error == (
        f"run {run_id} stayed locked for 0.2s (a replay of it may be running); try again later"
    )
    assert (busy.wrong, shared.wrong, shared.matched) == (True, False, 2)
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == [1, 2]


def test_a_key_that_is_not_a_stream_is_reported_and_replay_refuses_it(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=1)
    stream = key(outbox, run_id)
    redis_client.delete(stream)
    redis_client.set(stream, "x")

    checked, replayed = cli("verify", "--all"), cli("replay", run_id)

    unreadable = f"{stream} cannot be read as a stream: {WRONGTYPE}"
    assert (checked.exit_code, checked.stdout.splitlines()[0]) == (
        1,
        f"{run_id}: not checked: {unreadable}",
    )
    assert (replayed.exit_code, replayed.stdout, replayed.stderr) == (
        1,
        "",
        f"Error: {unreadable}\n",
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["verify"], 2, "give either a RUN_ID or --all. See 'outbox verify --help'."),
        pytest.param(
            ["verify", "{run}", "--all"],
            2,
            "give either a RUN_ID or --all, not both. See 'outbox verify --help'.",
        ),
        pytest.param(
            ["verify", "xyz"],
            2,
            "Invalid value for '[RUN_ID]': run id must be a UUID, got 'xyz'. "
            "See 'outbox verify --help'.",
        ),
        pytest.param(["verify", "{unknown}"], 1, "no run with id {unknown}"),
        pytest.param(["replay"], 2, "Missing argument 'RUN_ID'. See 'outbox replay --help'."),
        pytest.param(
            ["replay", "xyz"],
            2,
            "Invalid value for '[RUN_ID]': run id must be a UUID, got 'xyz'. "
            "See 'outbox replay --help'.",
        ),
        pytest.param(
            ["replay", "{run}", "--from-seq", "0"],
            2,
            "Invalid value for '--from-seq': 0 is not in the range x>=1. "
            "See 'outbox replay --help'.",
        ),
        pytest.param(["replay", "{unknown}"], 1, "no run with id {unknown}"),
    ],
)
def test_verify_and_replay_refuse_bad_input_with_one_line_and_change_nothing(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
    args: list[str],
    code: int,
    message: str,
) -> None:
    [run_id] = published(Session, events=2)
    redis_client.delete(key(outbox, run_id))
    values = {"run": str(run_id), "unknown": str(uuid.uuid4())}

    result = cli(*(a.format(**values) for a in args))

    assert (result.exit_code, result.stdout) == (code, "")
    assert result.stderr == f"Error: {message.format(**values)}\n"
    assert stream_seqs(redis_client, outbox.settings.stream_prefix, run_id) == []


def test_an_unreachable_sink_is_one_line_exit_1_without_the_password(
    Session: sessionmaker[Session], settings: Settings
) -> None:
    [run_id] = seed(Session, events=1)
    down = dataclasses.replace(settings, redis_url="redis://:s3cret@127.0.0.1:1/0")
    runtime.configure(down, session_factory=Session)

    for args in (["verify", str(run_id)], ["verify", "--all"], ["replay", str(run_id)]):
        result = cli(*args)
        assert (result.exit_code, result.stdout) == (1, ""), args
        assert result.stderr.startswith("Error: Redis at redis://:***@127.0.0.1:1/0 is ")
        assert result.stderr.count("\n") == 1
        assert "s3cret" not in result.output


def test_verify_all_draws_its_progress_bar_on_stderr_for_a_terminal_only(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_ids = published(Session, runs=2, events=1)
    redis_client.delete(key(outbox, run_ids[0]))

    plain = cli("verify", "--all")
    monkeypatch.setattr("tasks.cli._progress_shown", lambda: True)
    shown = cli("verify", "--all")

    assert plain.stderr == ONE_WRONG
    assert shown.stdout == plain.stdout
    assert "verifying runs" in shown.stderr
    assert shown.stderr.endswith(ONE_WRONG)


def test_the_tasks_verify_and_replay_run_eagerly_and_return_json_dicts(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=3)
    redis_client.delete(key(outbox, run_id))

    every = verify.delay().get()
    one = verify.delay(str(run_id)).get()
    restored = replay.delay(str(run_id), from_seq=2).get()
    after = verify.delay(str(run_id)).get()

    problem = {
        "run_id": str(run_id),
        "status": "wrong",
        "next_seq": 4,
        "matched": 0,
        "missing": 3,
        "missing_seqs": "1-3",
        "differ": 0,
        "extra": 0,
        "ahead": 0,
        "trimmed": 0,
        "unchecked": 0,
    }
    totals = {"runs": 1, "wrong_runs": 1, "events": 3, "matched": 0, "missing": 3}
    assert every == one
    assert one == {
        "status": "wrong",
        **totals,
        "differ": 0,
        "extra": 0,
        "trimmed": 0,
        "ahead": 0,
        "unchecked": 0,
        "problems": [problem],
    }
    assert restored == {
        "run_id": str(run_id),
        "status": "complete",
        "from_seq": 2,
        "added": 2,
        "already_present": 0,
        "not_restored": 0,
    }
    assert (after["status"], after["missing"], after["matched"]) == ("wrong", 1, 2)
    assert json.loads(json.dumps(after)) == after


def test_the_replay_task_with_rebuild_writes_the_stream_anew_as_the_cli_does(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=5)
    before = entries(outbox, run_id)
    redis_client.xdel(key(outbox, run_id), "2-0", "4-0")  # below the last id: no plain replay
    plain = replay.delay(str(run_id)).get()

    rebuilt = replay.delay(str(run_id), rebuild=True).get()
    again = replay.delay(str(run_id)).get()

    assert (plain["status"], plain["not_restored_seqs"]) == ("incomplete", "2, 4")
    assert rebuilt == {
        "run_id": str(run_id),
        "status": "complete",
        "from_seq": 1,
        "added": 5,
        "already_present": 0,
        "not_restored": 0,
        "rebuilt": True,
        "removed": 3,
    }
    assert entries(outbox, run_id) == before  # the same ids, types, payloads and event ids
    assert (again["added"], again["already_present"]) == (0, 5)
    assert verify.delay(str(run_id)).get()["status"] == "ok"


def test_the_replay_task_will_not_rebuild_a_stream_that_holds_another_runs_entries(
    Session: sessionmaker[Session], outbox: runtime.Runtime, redis_client: redis.Redis
) -> None:
    [run_id] = published(Session, events=2)
    xadd(redis_client, key(outbox, run_id), "3-1", "stray", "{}")
    old = entries(outbox, run_id)

    result = replay.delay(str(run_id), rebuild=True).get()

    assert (result["status"], "rebuilt" in result) == ("incomplete", False)
    assert result["conflict"].startswith("the stream holds entries the publisher did not write")
    assert entries(outbox, run_id) == old


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "error", "match"),
    [
        pytest.param(verify, ["xyz"], {}, InvalidRunId, "got 'xyz'", id="verify malformed id"),
        pytest.param(replay, [], {}, InvalidTaskArguments, "outbox.replay takes", id="no id"),
        pytest.param(replay, ["{run}"], {"from_seq": 0}, InvalidTaskArguments, "got 0"),
        pytest.param(replay, ["{run}"], {"from_seq": "2"}, InvalidTaskArguments, "got '2'"),
        pytest.param(
            replay,
            ["{run}"],
            {"rebuild": "yes"},
            InvalidTaskArguments,
            "rebuild must be true or false, got 'yes'",
            id="rebuild a string",
        ),
        pytest.param(
            replay,
            ["{run}"],
            {"rebuild": 1},
            InvalidTaskArguments,
            "rebuild must be true or false, got 1",
            id="rebuild an int",
        ),
        pytest.param(
            replay,
            ["{run}"],
            {"rebuild": True, "from_seq": 2},
            InvalidTaskArguments,
            "from_seq goes with a plain replay only",
            id="rebuild from_seq",
        ),
        pytest.param(
            replay,
            ["{run}", "1", "true", "x"],
            {},
            InvalidTaskArguments,
            r"outbox.replay takes \(run_id, from_seq, rebuild\)",
            id="too many",
        ),
        pytest.param(replay, ["{unknown}"], {}, UnknownRun, "no run with id", id="unknown"),
        pytest.param(verify, ["{unknown}"], {}, UnknownRun, "no run with id", id="v unknown"),
    ],
)
def test_the_tasks_refuse_malformed_arguments_clearly(
    Session: sessionmaker[Session],
    outbox: runtime.Runtime,
    task: Any,
    args: list[str],
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    [run_id] = published(Session, events=1)
    values = {"run": str(run_id), "unknown": str(uuid.uuid4())}
    with pytest.raises(error, match=match):
        # apply: as a worker runs a message, which may come from anywhere (`celery call`)
        task.apply(args=[a.format(**values) for a in args], kwargs=kwargs).get()
