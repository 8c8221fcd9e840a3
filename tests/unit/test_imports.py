"""The layers stay apart: checked in a fresh interpreter, where nothing is imported yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    program = f"import sys\n{statement}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded_after(statement: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after ``statement``."""
    return {name.split(".")[0] for name in modules_after(statement)}


@pytest.mark.parametrize(
    "statement", ["import tasks.drain", "import tasks.jobs", "import tasks.queueing"]
)
def test_the_drain_core_and_the_plain_layers_load_neither_celery_nor_redis(
    statement: str,
) -> None:
    assert loaded_after(statement) & {"celery", "kombu", "redis"} == set()


def test_the_sinks_load_no_feature_module() -> None:
    # The stream types verify and replay read with live beside the Sink protocol, so a sink
    # depends on the protocol only, never on the features built over it.
    features = {"tasks.verify", "tasks.replay", "tasks.purge", "tasks.jobs", "tasks.cli"}
    assert modules_after("import tasks.redis_sink") & features == set()


def test_the_producer_api_does_not_load_the_tasks_package() -> None:
    assert "tasks" not in loaded_after("from models import append_event")


def test_the_celery_app_is_still_found_where_celery_and_applications_look() -> None:
    assert {"celery", "tasks"} <= loaded_after("from tasks import app; assert app.main")
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "report"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "loader   -> celery.loaders.app.AppLoader" in done.stdout


def test_the_models_base_of_a_fresh_process_knows_every_table() -> None:
    # migrations/env.py compares against `from models import Base`; names load lazily, so
    # Base must come with the module that declares the tables.
    code = "from models import Base\nprint(sorted(Base.metadata.tables))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "['run_events', 'run_outbox', 'runs', 'sink_health']"
