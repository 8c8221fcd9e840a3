"""The Celery application, configured from the ``celeryconfig`` module."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import click
from celery import Celery, Task, signals

from models import errors
from models.db import identify_as
from tasks import logs, metrics, shutdown
from tasks.settings import check_environment

# The most characters of Python's own complaint about the arguments that an error quotes: a
# message may carry a keyword argument with a name megabytes long.
_MAX_REASON_CHARS = 100


class InvalidTaskArguments(errors.OutboxError, TypeError):
    """A task was sent arguments that its signature does not take."""


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


def _refuse_invalid_settings_under_the_celery_command() -> None:
    """Under ``celery -A tasks ...``, check every setting now: one line and exit 1 if one is bad.

    Celery reads its configuration lazily, while it parses a command's options, and reports
    an error there (or in a worker that says "ready" and then fails every task) with a
    traceback. The command loads this module first, inside its own click context, so the
    check here comes before all of that. Imported anywhere else, the module checks nothing:
    an application gets a ConfigError from whatever reads the bad setting, as usual.
    """
    context = click.get_current_context(silent=True)
    if context is None:
        return
    if getattr(context.find_root().command.callback, "__module__", None) != "celery.bin.celery":
        return
    try:
        check_environment()
    except errors.ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(1) from None


_refuse_invalid_settings_under_the_celery_command()

app = Celery("outbox", include=["tasks.outbox"])
app.config_from_object("celeryconfig")


# Workers and beat say what they are in their database connections' application_name
# (models.db), so a drainer attached to a database can be named. Pool children inherit the
# role, and each connection carries the pid of the process that opened it.
@signals.worker_init.connect(dispatch_uid="outbox.identify_worker")
def _identify_worker(**_: Any) -> None:
    identify_as("worker")


@signals.beat_init.connect(dispatch_uid="outbox.identify_beat")
def _identify_beat(**_: Any) -> None:
    identify_as("beat")


# Logging of the worker and beat (tasks.logs): JSON lines with OUTBOX_LOG_FORMAT=json, and no
# line for a dispatch tick that found nothing to queue. Pool processes inherit both.
@signals.after_setup_logger.connect(dispatch_uid="outbox.setup_logger")
def _setup_logger(logger: logging.Logger, **_: Any) -> None:
    logs.quiet_idle_dispatch()
    if app.conf.outbox_log_format == "json":
        logs.format_as_json(logger, _current_task)


@signals.after_setup_task_logger.connect(dispatch_uid="outbox.setup_task_logger")
def _setup_task_logger(logger: logging.Logger, **_: Any) -> None:
    if app.conf.outbox_log_format == "json":
        logs.format_as_json(logger, _current_task)


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
