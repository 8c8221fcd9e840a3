"""Celery settings for the outbox publisher, every one read from the environment.

Loaded by ``tasks.celery_app`` from this file's path, under a private module name, so that an
application's own ``celeryconfig`` module (first on sys.path) never replaces it; an application
layers its settings on top with ``app.conf.update(...)``. Messages are JSON, and only JSON is
accepted.
The values come from ``tasks.settings.CelerySettings``, which checks them: an invalid one is a
ConfigError naming its variable (``celery -A tasks ...`` reports it before this module loads).
"""

from __future__ import annotations

from kombu import Exchange as _Exchange
from kombu import Queue as _Queue

from tasks.settings import CelerySettings as _CelerySettings  # private: not a Celery setting

_settings = _CelerySettings.from_env()

broker_url = _settings.broker_url  # by default the sink's Redis (OUTBOX_REDIS_URL)
result_backend = _settings.result_backend
task_default_queue = _settings.default_queue
# The outbox tasks have a queue of their own (OUTBOX_QUEUE), so that an application's other
# tasks, on the default queue, never hold a drain up. Both queues are declared here, so a
# worker started without -Q consumes both; `-Q outbox` makes a worker that only drains.
task_queues = tuple(
    _Queue(name, _Exchange(name), routing_key=name)
    for name in dict.fromkeys((_settings.default_queue, _settings.outbox_queue))
)
task_routes = {"outbox.*": {"queue": _settings.outbox_queue}}

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
# Brokers that emulate acknowledgements (SQS; Redis only with ack emulation, off below)
# redeliver an unacknowledged message after the visibility timeout; it must exceed the
# longest drain, which task_time_limit bounds.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    # Redis broker: no ack emulation. With it, Celery 5.7.0 kills a worker whose broker
    # restarts while it holds unacknowledged messages ("Unrecoverable error: AttributeError:
    # 'NoneType' object has no attribute 'hostname'", in kombu's restore_unacked): 10 of 18
    # workers died in 6 trials of 5 restarts each, 0 of 18 without it. Without it a worker
    # that dies loses the messages it held instead of handing them back after the visibility
    # timeout, which costs nothing here: a lost drain's runs are queued again once their
    # marks expire (OUTBOX_QUEUED_TTL, 30 s), long before the visibility timeout (600 s).
    # RabbitMQ ignores the option.
    "ack_emulation": False,
}
task_soft_time_limit = _settings.soft_time_limit
task_time_limit = _settings.time_limit

timezone = "UTC"
enable_utc = True

DISPATCH_INTERVAL = _settings.dispatch_interval

# Not Celery's: read by the worker's and beat's signal handlers (tasks.celery_app). A warm
# shutdown waits this long for running drains, then cancels them (tasks.shutdown).
outbox_shutdown_timeout = _settings.shutdown_timeout
outbox_log_format = _settings.log_format  # "text" or "json" (tasks.logs)
# A worker that does not consume this queue logs that it will never drain (tasks.celery_app).
outbox_queue = _settings.outbox_queue

beat_schedule = {
    "outbox-dispatch": {
        "task": "outbox.dispatch",
        "schedule": DISPATCH_INTERVAL,
        # A dispatch that waited longer than a few intervals is stale: a newer one will do.
        "options": {"expires": max(DISPATCH_INTERVAL * 5, 5.0)},
    },
    # Retention: each run deletes a bounded amount (tasks.purge.MAX_BATCHES batches) and the
    # next goes on, so one a minute keeps up with the producers without holding a worker long.
    # A purge that waited a whole interval is stale: the next one will do.
    "outbox-purge": {"task": "outbox.purge", "schedule": 60.0, "options": {"expires": 60.0}},
}
