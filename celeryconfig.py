"""Celery settings for the outbox publisher, every one read from the environment.

Loaded by module name (``app.config_from_object("celeryconfig")``), as Celery recommends, so
prefork children read the same settings. Messages are JSON, and only JSON is accepted.
"""

from __future__ import annotations

import os


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


# The broker defaults to the sink's Redis, so one Redis server is all a small setup needs.
broker_url = (
    os.environ.get("CELERY_BROKER_URL")
    or os.environ.get("OUTBOX_REDIS_URL")
    or "redis://127.0.0.1:6379/0"
)
result_backend = os.environ.get("CELERY_RESULT_BACKEND") or None
task_default_queue = os.environ.get("CELERY_TASK_DEFAULT_QUEUE") or "celery"

task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A drain is idempotent, so redelivery after a crash is safe; acknowledging late makes a worker
# that dies mid-drain hand its message back instead of losing it.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True
# Redis broker: an unacknowledged message is redelivered after this long; it must exceed the
# longest drain, which task_time_limit bounds.
broker_transport_options = {"visibility_timeout": _float("CELERY_VISIBILITY_TIMEOUT", 600)}
task_soft_time_limit = _float("CELERY_TASK_SOFT_TIME_LIMIT", 240)
task_time_limit = _float("CELERY_TASK_TIME_LIMIT", 300)

timezone = "UTC"
enable_utc = True

DISPATCH_INTERVAL = _float("OUTBOX_DISPATCH_INTERVAL", 1.0)

beat_schedule = {
    "outbox-dispatch": {
        "task": "outbox.dispatch",
        "schedule": DISPATCH_INTERVAL,
        # A dispatch that waited longer than a few intervals is stale: a newer one will do.
        "options": {"expires": max(DISPATCH_INTERVAL * 5, 5.0)},
    },
}
