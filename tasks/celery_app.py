"""The Celery application, configured from the ``celeryconfig`` module."""

from __future__ import annotations

from celery import Celery

app = Celery("outbox", include=["tasks.outbox"])
app.config_from_object("celeryconfig")
