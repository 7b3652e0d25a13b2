"""BackgroundTaskManager: the bridge from the state manager to Celery.

`start_task` sends `agentexec.run_execution(execution_id, attempt)` with the
execution's queue and priority; `cancel_task` revokes a queued message and signals
the worker running it over the Redis control channel; `get_task` returns the
Celery AsyncResult; `clear_task` forgets it.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict

from celery import Celery
from celery.result import AsyncResult

from app.execution.control import CANCEL, ControlHub
from app.execution.dispatch import RUN_EXECUTION, celery_task_id

_REMEMBERED = 10_000


def celery_priority(priority: int) -> int:
    """Our 0-9 scale has 9 as most urgent; Celery's Redis transport serves 0 first."""
    return 9 - max(0, min(9, priority))


class BackgroundTaskManager:
    """Manages background tasks for executions, on Celery."""

    def __init__(self, celery_app: Celery, control_hub: ControlHub | None = None):
        self.celery_app = celery_app
        self.control_hub = control_hub
        self._tasks: OrderedDict[uuid.UUID, AsyncResult] = OrderedDict()
        self._lock = threading.Lock()

    def start_task(
        self, execution_id: uuid.UUID, attempt: int, *, queue: str, priority: int, countdown: float = 0
    ) -> AsyncResult:
        """Send the task of this attempt (after the QUEUED transition committed)."""
        result = self.celery_app.send_task(
            RUN_EXECUTION,
            args=[str(execution_id), attempt],
            task_id=celery_task_id(execution_id, attempt),
            queue=queue,
            priority=celery_priority(priority),
            countdown=countdown or None,
        )
        with self._lock:
            self._tasks[execution_id] = result
            self._tasks.move_to_end(execution_id)
            while len(self._tasks) > _REMEMBERED:
                self._tasks.popitem(last=False)
        return result

    def cancel_task(self, execution_id: uuid.UUID, attempt: int | None = None) -> None:
        """Revoke the queued message (if any) and tell the worker running it to stop."""
        if attempt is not None:
            self.celery_app.control.revoke(celery_task_id(execution_id, attempt))
        self.signal_task(execution_id, CANCEL)

    def signal_task(self, execution_id: uuid.UUID, command: str) -> None:
        """Send a control command (cancel, pause) to whichever worker holds the execution."""
        if self.control_hub is not None:
            self.control_hub.send(execution_id, command)

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in the broker on `queue` (all priorities); 0 when it does not exist."""
        with self.celery_app.connection_for_read() as conn:
            try:
                return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
            except conn.channel_errors:  # no such queue: Redis drops an empty list
                return 0

    def get_task(self, execution_id: uuid.UUID) -> AsyncResult | None:
        """The AsyncResult of the last task sent for the execution from this process."""
        with self._lock:
            return self._tasks.get(execution_id)

    def clear_task(self, execution_id: uuid.UUID) -> None:
        """Forget the execution's task reference."""
        with self._lock:
            self._tasks.pop(execution_id, None)
