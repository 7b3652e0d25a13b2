"""Flat Celery settings, read from the same settings object as everything else."""

from app.config import Settings
from app.execution.dispatch import PURGE, REAP, SCHEDULE_TICK, reaper_queue
from app.webhooks import WEBHOOK_DISPATCH, webhook_queue

_s = Settings()

broker_url = _s.celery_broker_url
broker_connection_retry_on_startup = True
broker_transport_options = {
    # Longer than the longest allowed execution: Redis must not redeliver a running task;
    # a lost worker is found by the heartbeat lease instead.
    "visibility_timeout": _s.max_timeout_seconds + 3600,
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    # No "retry_on_timeout": it makes redis-py retry a failed read once, reconnecting first.
    # On the worker's pub/sub (remote control) connection that retry reconnects to a Redis
    # restarted meanwhile and then blocks forever waiting for a message: the worker stops
    # consuming and never notices. Without it the error reaches kombu and Celery reconnects.
}
# The state lives in PostgreSQL; Celery's results are not needed.
task_ignore_result = True
result_backend = None
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_default_queue = _s.default_queue
task_serializer = "json"
accept_content = ["json"]
# Task events on, so Flower sees everything.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True
worker_pool = _s.worker_pool
worker_concurrency = _s.worker_concurrency
worker_hijack_root_logger = False
worker_cancel_long_running_tasks_on_connection_loss = False
beat_schedule = {
    # A reap that waited longer than a few intervals (no worker was up) is dropped, not run in a burst.
    "reap-executions": {
        "task": REAP,
        "schedule": _s.reaper_interval,
        "options": {"expires": max(3 * _s.reaper_interval, 5.0), "queue": reaper_queue(_s.default_queue)},
    },
    # Delayed starts and cron schedules: due ones are found in PostgreSQL every second (never a
    # Celery ETA, which Redis redelivers after its visibility timeout). A tick that waited past
    # a few intervals is dropped: the next one does the same work.
    "tick-schedules": {
        "task": SCHEDULE_TICK,
        "schedule": _s.schedule_tick_interval,
        "options": {
            "expires": max(3 * _s.schedule_tick_interval, 3.0),
            "queue": reaper_queue(_s.default_queue),
        },
    },
}
# Webhooks: the dispatcher's pass (fan-out from the event log, then claims of due deliveries).
beat_schedule["dispatch-webhooks"] = {
    "task": WEBHOOK_DISPATCH,
    "schedule": _s.webhook_poll_interval,
    "options": {"expires": max(3 * _s.webhook_poll_interval, 5.0), "queue": webhook_queue(_s.default_queue)},
}
if _s.retention_days > 0:  # finished executions older than RETENTION_DAYS go, in batches
    beat_schedule["purge-finished-executions"] = {
        "task": PURGE,
        "schedule": _s.retention_interval,
        "options": {"expires": _s.retention_interval, "queue": reaper_queue(_s.default_queue)},
    }
