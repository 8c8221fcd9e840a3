"""The Celery application, configured from the ``celeryconfig`` module."""

from __future__ import annotations

import inspect
from typing import Any

import click
from celery import Celery, Task

from models import errors
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
