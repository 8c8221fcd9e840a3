"""The Celery application, configured from the project's own ``celeryconfig.py``.

The settings come from the ``celeryconfig.py`` installed beside the ``tasks`` package (both in
site-packages, or both in the checkout), loaded by its path under a private module name: a
``celeryconfig`` module of the application's, first on sys.path (Celery's own convention puts
one in the folder a worker starts from), is never read instead. An application layers its own
settings on top in a module of its own, ``from tasks import app; app.conf.update(...)``, and
starts ``celery -A thatmodule worker``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
from celery import Celery, Task, signals

import outbox_names
from models import errors
from models.db import identify_as
from tasks import logs, metrics, shutdown
from tasks.errors import InvalidTaskArguments
from tasks.settings import check_environment

# The most characters of Python's own complaint about the arguments that an error quotes: a
# message may carry a keyword argument with a name megabytes long.
_MAX_REASON_CHARS = 100


class CheckedTask(Task[Any, Any]):
    """A task that checks the arguments of each message against its signature first.

    A message may come from anywhere (``celery call``, another application, a hand-made
    message), so wrong arguments fail the task with one line naming the task and what it
    takes, not with a TypeError from deep inside. The errors a task expects from bad input
    (``throws``) are logged as one line, without a traceback, and are never retried.
    """

    throws = (InvalidTaskArguments, errors.InvalidRunId)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        signature = inspect.signature(self.run)
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            names = ", ".join(signature.parameters)
            takes = f"({names})" if names else "no arguments"
            reason = str(exc)[:_MAX_REASON_CHARS]
            raise InvalidTaskArguments(
                f"{self.name} takes {takes}, got {len(args)} positional and {len(kwargs)} "
                f"keyword arguments: {reason}"
            ) from None
        return super().__call__(*args, **kwargs)


def _allow_embedded_servers_for_a_worker_or_beat() -> None:
    """``celery -A tasks worker|beat`` may start the embedded servers (``models.embedded``).

    Only where no URL is set and nothing answers on the default ports: a newcomer's worker
    and beat then find the same PostgreSQL and Valkey as ``outbox demo``. The subcommand is
    known by now (``-A`` is imported while it is parsed), before any setting is read.
    """
    root = outbox_names.celery_command()
    if root is not None and root.invoked_subcommand in ("worker", "beat"):
        from models import embedded

        embedded.allow_start()


_allow_embedded_servers_for_a_worker_or_beat()


def _refuse_invalid_settings_under_the_celery_command() -> None:
    """Under ``celery -A tasks ...``, check every setting now: one line and exit 1 if one is bad.

    Celery reads its configuration lazily, while it parses a command's options, and reports
    an error there (or in a worker that says "ready" and then fails every task) with a
    traceback. The command loads this module first, inside its own click context, so the
    check here comes before all of that. Imported anywhere else, the module checks nothing:
    an application gets a ConfigError from whatever reads the bad setting, as usual.
    """
    if outbox_names.celery_command() is None:
        return
    try:
        check_environment()
    except errors.ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(1) from None


_refuse_invalid_settings_under_the_celery_command()

# The project's celeryconfig.py, next to the tasks package, and the name it is loaded under.
CONFIG_FILE = Path(__file__).resolve().parents[1] / "celeryconfig.py"
CONFIG_MODULE = "_outbox_celeryconfig"


def _note_a_foreign_celeryconfig_under_the_celery_command() -> None:
    """Under ``celery``, say in one line that a ``celeryconfig`` of someone else's is not read.

    Celery's convention is a celeryconfig.py in the folder a worker starts from; its settings
    would otherwise be ignored without a word. Anywhere else (an application's own process,
    its tests), nothing is printed.
    """
    if outbox_names.celery_command() is None:
        return
    try:
        spec = importlib.util.find_spec("celeryconfig")
    except (ImportError, ValueError):
        return
    if spec is None or spec.origin is None or Path(spec.origin).resolve() == CONFIG_FILE:
        return
    click.echo(
        f"Note: {spec.origin} is not read: the outbox's app has its own settings "
        f"({CONFIG_FILE}); to change some, update them in a module of yours (`from tasks "
        "import app; app.conf.update(...)`) and start `celery -A yourmodule ...`",
        err=True,
    )


_note_a_foreign_celeryconfig_under_the_celery_command()


def _own_config() -> types.ModuleType:
    """The project's celeryconfig module, loaded from CONFIG_FILE (once per process).

    Registered in sys.modules under CONFIG_MODULE, so that it is loaded once, and a prefork
    child (forked) has it already.
    """
    loaded = sys.modules.get(CONFIG_MODULE)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(CONFIG_MODULE, CONFIG_FILE)
    if spec is None or spec.loader is None:  # pragma: no cover - the file is part of the package
        raise ImportError(f"cannot load the outbox's Celery settings from {CONFIG_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[CONFIG_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[CONFIG_MODULE]  # a settings error leaves nothing half-loaded behind
        raise
    return module


class _OwnConfig(Mapping[str, Any]):
    """The settings of the project's celeryconfig, read from the file on first use.

    Celery reads a configuration object lazily, the first time a setting is needed, as it
    imported ``config_from_object("celeryconfig")`` lazily: an application that imports the
    app with an invalid setting in its environment gets the ConfigError from that read, not
    from its import (tasks/settings.py checks the values as the module loads).
    """

    def _settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(_own_config()).items() if not k.startswith("__")}

    def __getitem__(self, key: str) -> Any:
        return self._settings()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings())

    def __len__(self) -> int:
        return len(self._settings())


app = Celery("outbox", include=["tasks.outbox"])
app.config_from_object(_OwnConfig())


# Workers and beat say what they are in their database connections' application_name
# (models.db), so a drainer attached to a database can be named. Pool children inherit the
# role, and each connection carries the pid of the process that opened it.
@signals.worker_init.connect(dispatch_uid="outbox.identify_worker")
def _identify_worker(**_: Any) -> None:
    identify_as("worker")


@signals.beat_init.connect(dispatch_uid="outbox.identify_beat")
def _identify_beat(**_: Any) -> None:
    identify_as("beat")


# Logging of the worker and beat (tasks.logs): JSON lines with OUTBOX_LOG_FORMAT=json, no
# line for a dispatch tick that found nothing to queue, and one line, not a traceback, for a
# dispatch beat could not send because the broker is down. Pool processes inherit all three.
@signals.after_setup_logger.connect(dispatch_uid="outbox.setup_logger")
def _setup_logger(logger: logging.Logger, **_: Any) -> None:
    logs.quiet_idle_dispatch()
    logs.shorten_beat_send_errors(_broker_connection_errors())
    if app.conf.outbox_log_format == "json":
        logs.format_as_json(logger, _current_task)


@signals.after_setup_task_logger.connect(dispatch_uid="outbox.setup_task_logger")
def _setup_task_logger(logger: logging.Logger, **_: Any) -> None:
    if app.conf.outbox_log_format == "json":
        logs.format_as_json(logger, _current_task)


def _broker_connection_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "the broker cannot be reached": Kombu's, and the transport's own.

    Building the connection object loads the transport's class only; nothing connects.
    """
    from kombu.exceptions import OperationalError

    transport = app.connection_for_write()
    try:
        return (OperationalError, ConnectionError, *transport.connection_errors)
    finally:
        transport.release()


# A worker that does not consume the outbox queue never drains, and nothing else would say so:
# beat keeps sending outbox.dispatch into a queue nobody reads.
_worker_logger = logging.getLogger("tasks.worker")


@signals.worker_ready.connect(dispatch_uid="outbox.check_queues")
def _check_queues(sender: Any = None, **_: Any) -> None:
    if getattr(sender, "app", None) is not app:  # signals are global: another app's worker
        return
    consumed = sorted(queue.name for queue in app.amqp.queues.consume_from.values())
    outbox_queue = app.conf.outbox_queue
    if outbox_queue not in consumed:
        _worker_logger.warning(
            "this worker does not consume the outbox queue %r (it consumes %s) and will never "
            "drain: the dispatches and drains wait there. Start it with -Q %s, or without -Q",
            outbox_queue,
            ", ".join(consumed) or "nothing",
            ",".join(dict.fromkeys([*consumed, outbox_queue])),
        )


def _current_task() -> dict[str, str]:
    """The task a JSON line was logged in, if any: its name and id."""
    task = app.current_task
    if task is None or task.request.id is None:
        return {}
    return {"task": task.name, "task_id": str(task.request.id)}


# Graceful shutdown (tasks.shutdown): on a warm shutdown the drains stop after their batch,
# and a cold shutdown cancels what still runs after OUTBOX_SHUTDOWN_TIMEOUT.
@signals.worker_shutting_down.connect(dispatch_uid="outbox.stop_drains")
def _stop_drains(how: str, **_: Any) -> None:
    if how == "Warm":  # a cold shutdown cancels the running drains itself
        shutdown.begin(app.conf.outbox_shutdown_timeout)


@signals.worker_shutdown.connect(dispatch_uid="outbox.drains_stopped")
def _drains_stopped(**_: Any) -> None:
    shutdown.end()


# Metrics in prometheus_client's multiprocess mode (tasks.metrics): a pool process that ends
# has its live gauges' files removed.
@signals.worker_process_shutdown.connect(dispatch_uid="outbox.metrics_process_dead")
def _metrics_process_dead(pid: int, **_: Any) -> None:
    metrics.process_exited(pid, os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)
