"""The ``pytest11`` entry point ``outbox``: the outbox's fixtures, unless its names are taken.

pytest loads every installed plugin in every application's test run, so an entry point that
imported ``tasks.testing.plugin`` straight away would break the whole run of an application
with a ``tasks/`` (or ``models/``) package of its own ("Error while loading plugin"). This
module's name is unique, and it checks both names (``outbox_names``) before it imports them:
when they are the outbox's, it loads the fixtures (``tasks.testing.plugin``, through
``pytest_plugins``); when one is someone else's, it stands aside and prints one line naming
the file that took the name and the fix. ``-p no:outbox`` leaves it out, line included.
"""

from __future__ import annotations

import sys

import pytest

import outbox_names

SHADOWED = outbox_names.problem()

if SHADOWED is None:
    pytest_plugins = ["tasks.testing.plugin"]
else:

    def pytest_configure(config: pytest.Config) -> None:
        # Once per run: xdist's workers load the plugins too, and their controller says it.
        if not hasattr(config, "workerinput"):
            print(
                f"outbox pytest plugin not loaded (its fixtures are missing): {SHADOWED}; "
                "-p no:outbox silences this line",
                file=sys.stderr,
            )
