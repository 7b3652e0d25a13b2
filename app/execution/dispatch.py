"""What the core needs from the task queue: the dispatcher protocol, the task names and task ids.

Celery lives in workers/ (BackgroundTaskManager implements TaskDispatcher); the names and
the task id format are defined here, once, so the core, the worker and the SQL agree.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

RUN_EXECUTION = "agentexec.run_execution"
REAP = "agentexec.reap"
PURGE = "agentexec.purge"  # the retention job (RETENTION_DAYS), on the reaper's queue
SCHEDULE_TICK = "agentexec.schedules.tick"  # delayed starts and cron schedules, on the reaper's queue
# The periodic_status rows of beat's passes that keep no record of their own (liveness).
SCHEDULE_TICK_RECORD = "schedule_tick"
WEBHOOK_DISPATCH_RECORD = "webhook_dispatch"


def reaper_queue(default_queue: str) -> str:
    """The queue beat sends the reaper's task to; every worker of `default_queue` consumes it.

    Its own queue, so a reap never waits behind a backlog of executions, and (the task sends
    no events) the reaper's pass every few seconds stays out of Flower's task list: its
    liveness is the reaper_status row (`agentexec status`, /readyz, /metrics).
    """
    return f"{default_queue}.reaper"


def celery_task_id(execution_id: uuid.UUID | str, attempt: int) -> str:
    """The deterministic Celery task id of one attempt (stored as executions.celery_task_id).

    The transition writer computes the same id in SQL for the next attempt (Expr.NEXT_TASK_ID).
    """
    return f"{execution_id}-{attempt}"


class TaskDispatcher(Protocol):
    """What the state manager needs from the BackgroundTaskManager."""

    def start_task(
        self, execution_id: uuid.UUID, attempt: int, *, queue: str, priority: int, countdown: float = 0
    ) -> Any: ...

    def cancel_task(self, execution_id: uuid.UUID, attempt: int | None = None) -> None: ...

    def signal_task(self, execution_id: uuid.UUID, command: str) -> None: ...

    def queue_depth(self, queue: str) -> int: ...
