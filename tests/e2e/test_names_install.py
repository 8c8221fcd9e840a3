"""An application's own ``celeryconfig.py``, ``tasks/`` or ``models/`` next to a regular
(non-editable) install of the project: the outbox keeps its own settings, a shadowed name stops
a process with one line naming the file, and the application's own test run is never broken.

The project is built as a wheel and installed, without its dependencies, into a virtual
environment of this module's own (built once); the dependencies come from the development
environment's site-packages through a ``.pth`` line, which adds that folder to sys.path without
running its ``.pth`` files, so the development environment's editable finder for this project
is not installed there. Each case runs in a throwaway application folder, the current directory
of the process, first on sys.path, as ``celery`` and ``python -m``/``-c`` put it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import came_true

pytestmark = pytest.mark.e2e

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What a wheel of the project is built from.
SOURCES = (
    "pyproject.toml",
    "README.md",
    "celeryconfig.py",
    "outbox_names.py",
    "outbox_pytest_plugin.py",
    "tasks",
    "models",
    "migrations",
)
SHADOWED = "the outbox-publisher's package {name!r} is shadowed by {file}"


@dataclasses.dataclass(frozen=True)
class Install:
    """A virtual environment with the project installed from a wheel."""

    root: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def site_packages(self) -> Path:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "lib" / version / "site-packages"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of its processes: no OUTBOX_, CELERY_ or PYTHONPATH of the caller's,
        queues of their own (a worker started here never takes another test's messages)."""
        kept = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("OUTBOX_", "CELERY_", "PYTHON", "VIRTUAL_ENV"))
        }
        tag = uuid.uuid4().hex[:8]
        return kept | {
            "PATH": f"{self.root / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "OUTBOX_QUEUE": f"names-{tag}-outbox",
            "CELERY_TASK_DEFAULT_QUEUE": f"names-{tag}-default",
            **extra,
        }

    def run(self, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """The project, installed non-editable into a virtual environment of this module's."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:  # a copy: building in the checkout would leave build/ behind there
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "v")], check=True)
    installed = Install(root / "v")
    [wheel] = wheels.glob("*.whl")
    subprocess.run(
        [*pip, "--python", installed.python, "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    (installed.site_packages / "_dev_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    found = installed.run(root, installed.python, "-c", "import tasks; print(tasks.__file__)")
    assert found.stdout.strip() == str(installed.site_packages / "tasks" / "__init__.py"), found
    return installed


def make_app(tmp_path: Path, files: dict[str, str]) -> Path:
    """An application's folder holding ``files`` (relative path: text)."""
    folder = tmp_path / "app"
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


@contextlib.contextmanager
def worker(install: Install, cwd: Path, log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A tasks worker`` of the install, in its own process group, always stopped."""
    args = ["-m", "celery", "-A", "tasks", "worker", "--pool=solo", "--loglevel=INFO"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [install.python, *args, "--without-mingle", "--without-gossip"],
            cwd=cwd,
            env=install.env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """The log once it holds ``text``; fails with the log if the process exits or time is up."""

    def logged() -> bool:
        return text in log.read_text(errors="replace")

    came_true(lambda: logged() or process.poll() is not None, timeout)
    content = log.read_text(errors="replace")
    if text not in content:
        pytest.fail(f"the worker did not log {text!r}:\n{content}", pytrace=False)
    return content


FOREIGN_CELERYCONFIG = """\
    broker_url = "memory://"
    task_acks_late = False
    task_routes = {}
    beat_schedule = {}
    """
SETTINGS_PROBE = (
    "from tasks import app; c = app.conf; "
    "print(c.task_acks_late, c.task_routes, sorted(c.beat_schedule))"
)


def test_an_applications_celeryconfig_leaves_the_installed_apps_settings_alone(
    install: Install, tmp_path: Path
) -> None:
    app = make_app(tmp_path, {"celeryconfig.py": FOREIGN_CELERYCONFIG})

    done = install.run(app, install.python, "-c", SETTINGS_PROBE, OUTBOX_QUEUE="outbox")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "True {'outbox.*': {'queue': 'outbox'}} ['outbox-dispatch', 'outbox-purge']"
    )


def test_a_worker_started_beside_an_applications_celeryconfig_consumes_the_outbox_queue(
    install: Install, tmp_path: Path
) -> None:
    app = make_app(tmp_path, {"celeryconfig.py": FOREIGN_CELERYCONFIG})
    log = tmp_path / "worker.log"
    queue = f"names-{uuid.uuid4().hex[:8]}-outbox"

    with worker(install, app, log, OUTBOX_QUEUE=queue) as process:
        content = wait_for(log, " ready.", process)

    assert "Traceback" not in content
    assert "AttributeError" not in content
    assert "does not consume the outbox queue" not in content
    assert "transport:   redis://" in content  # the outbox's broker, not memory://
    assert f".> {queue} exchange={queue}(direct)" in content  # [queues]: consumed
    [note] = [line for line in content.splitlines() if "is not read" in line]
    assert note.startswith(f"Note: {app / 'celeryconfig.py'} is not read: ")
    assert "app.conf.update(...)" in note


def test_an_applications_own_tasks_package_leaves_its_test_run_alone_with_one_line(
    install: Install, tmp_path: Path
) -> None:
    app = make_app(
        tmp_path,
        {
            "tasks/__init__.py": "VALUE = 42\n",
            "tests/test_app.py": """\
                import tasks

                def test_the_applications_own_tasks():
                    assert tasks.VALUE == 42
                """,
        },
    )

    done = install.run(app, install.python, "-m", "pytest", "-p", "no:randomly", "tests")

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "1 passed" in done.stdout
    assert "Error while loading plugin" not in output
    [line] = [line for line in output.splitlines() if "outbox pytest plugin" in line]
    assert SHADOWED.format(name="tasks", file=app / "tasks" / "__init__.py") in line
    assert "-p no:outbox silences this line" in line


MODELS = {"models/__init__.py": "class Thing:\n    pass\n"}


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_celery_beside_an_applications_own_models_stops_with_one_line(
    install: Install, tmp_path: Path, command: str
) -> None:
    app = make_app(tmp_path, MODELS)

    done = install.run(app, install.python, "-m", "celery", "-A", "tasks", command)

    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: ")
    assert SHADOWED.format(name="models", file=app / "models" / "__init__.py") in line


def test_importing_the_app_beside_an_applications_own_models_ends_with_one_line(
    install: Install, tmp_path: Path
) -> None:
    app = make_app(tmp_path, MODELS)

    done = install.run(app, install.python, "-c", "from tasks import app")

    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert SHADOWED.format(name="models", file=app / "models" / "__init__.py") in line
    assert "rename your models package" in line


def test_an_application_that_catches_the_error_gets_an_import_error_naming_the_file(
    install: Install, tmp_path: Path
) -> None:
    app = make_app(tmp_path, MODELS)
    program = (
        "try:\n    import tasks\nexcept ImportError as exc:\n"
        "    print(type(exc).__name__, exc.name, exc.path)\n"
    )

    done = install.run(app, install.python, "-c", program)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ShadowedPackage", "models", str(app / "models" / "__init__.py")]


@pytest.mark.parametrize("name", ["tasks", "models"])
def test_the_outbox_command_with_an_applications_package_on_the_path_stops_with_one_line(
    install: Install, tmp_path: Path, name: str
) -> None:
    app = make_app(tmp_path, {f"{name}/__init__.py": ""})

    done = install.run(app, "outbox", "--help", PYTHONPATH=str(app))

    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert SHADOWED.format(name=name, file=app / name / "__init__.py") in line
