"""Whether the names ``tasks`` and ``models`` are the outbox's own, checked before importing them.

The project's layout is fixed: its packages are the top-level ``tasks`` and ``models``, the
names an application is most likely to have too (``tasks/`` is Celery's own convention). An
application's package found first on ``sys.path`` (the current directory, ``PYTHONPATH``)
takes the name, and the outbox would then import someone else's code and fail somewhere deep
inside. This module has a name nobody else has and imports nothing but the standard library,
so it can tell, without importing either package, whether each name resolves to the package
installed beside it (both sit in site-packages in a regular install, in the checkout in an
editable one), and say which file took it, in one line.

``tasks`` checks ``models`` when it is imported; the pytest plugin's entry point
(``outbox_pytest_plugin``) checks both before it loads the fixtures; the ``outbox`` console
script (``main``) checks both before it imports the CLI.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent  # where this project's packages are installed
PACKAGES = ("tasks", "models")


class ShadowedPackage(ImportError):
    """A top-level name of the outbox (``tasks``, ``models``) resolves to someone else's module.

    Its message is one line: the name, the file that took it, where the outbox's own package
    is, and the fix. Uncaught, it is printed as that one line, without a traceback.
    """


def expected_location(name: str) -> Path:
    """Where the outbox's own package ``name`` is: beside this module."""
    return HERE / name


def found_location(name: str) -> Path | None:
    """The file (or, for a namespace package, the folder) that ``import name`` would load.

    Looked up without importing it (an imported module's own spec, if it is imported
    already); None when nothing by that name can be found at all.
    """
    module = sys.modules.get(name)
    try:
        spec = module.__spec__ if module is not None else importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a module in sys.modules without a spec
        spec = None
    if spec is None:
        origin = getattr(module, "__file__", None)
        return Path(origin) if origin else None
    if spec.origin and spec.origin not in {"namespace", "built-in", "frozen"}:
        return Path(spec.origin)
    locations = list(spec.submodule_search_locations or ())
    return Path(locations[0]) if locations else None


def is_own(name: str, location: Path | None) -> bool:
    """Whether ``location`` (found_location) is the outbox's own package ``name``."""
    if location is None:  # nothing found: the import fails by itself, with Python's message
        return True
    own = expected_location(name).resolve()
    return location.resolve() in {own, own / "__init__.py"}


def problem(names: Iterable[str] = PACKAGES) -> str | None:
    """The one-line complaint about the first of ``names`` that is not the outbox's, or None."""
    for name in names:
        location = found_location(name)
        if not is_own(name, location):
            return message(name, location)
    return None


def message(name: str, location: Path | None) -> str:
    """One line: which name is taken, by which file, and how to fix it."""
    return (
        f"the outbox-publisher's package {name!r} is shadowed by {location}, found first on "
        f"sys.path (its own is {expected_location(name)}): run the outbox from a folder whose "
        f"{name!r} is not importable (not the folder of your {name}/, not on PYTHONPATH), or "
        f"rename your {name} package"
    )


def refuse(name: str) -> None:
    """Raise ShadowedPackage if ``name`` is not the outbox's own package.

    Under the ``celery`` command (which would print any error from loading the app as a
    traceback) print the line and exit 1 instead, as the settings check does.
    """
    complaint = problem((name,))
    if complaint is None:
        return
    if celery_command() is not None:
        print(f"Error: {complaint}", file=sys.stderr)
        raise SystemExit(1)
    _print_uncaught_as_one_line()
    raise ShadowedPackage(complaint, name=name, path=str(found_location(name)))


def celery_command() -> Any:
    """The root click context of the ``celery`` command this process runs under, or None."""
    click = sys.modules.get("click")  # imported already under the command; never imported here
    if click is None:
        return None
    context = click.get_current_context(silent=True)
    if context is None:
        return None
    root = context.find_root()
    return (
        root if getattr(root.command.callback, "__module__", None) == "celery.bin.celery" else None
    )


def _print_uncaught_as_one_line() -> None:
    """Make an uncaught ShadowedPackage print as its one line (``python -c``, a script).

    An application that catches the error is unaffected; any other uncaught exception still
    goes to the hook that was there before.
    """
    previous = sys.excepthook
    if getattr(previous, "_outbox_one_line", False):
        return

    def hook(
        kind: type[BaseException],
        error: BaseException,
        traceback: types.TracebackType | None,
    ) -> None:
        if isinstance(error, ShadowedPackage):
            print(f"Error: {error}", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    hook._outbox_one_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def main() -> None:
    """The ``outbox`` console script: the CLI, once both names are known to be the outbox's."""
    complaint = problem()
    if complaint is not None:
        print(f"Error: {complaint}", file=sys.stderr)
        raise SystemExit(1)
    cli: Callable[[], object] = importlib.import_module("tasks.cli").main  # a click group
    cli()
