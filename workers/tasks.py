"""Celery tasks: run one attempt of an execution; reap stale ones. Both tiny, like web views.

Each worker process builds its ExecutionService once, through the composition root, when
it starts: `worker_process_init` in a prefork child, `worker_init` for the threads and
solo pools (one process). A process that runs a task without either signal (a test's
in-process worker started before the service was needed) builds it on first use, under a
lock, so two threads never build two services.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import structlog
from celery import signals

from app.bootstrap import build_service
from app.execution.control import ControlHub
from app.execution.dispatch import REAP, RUN_EXECUTION
from app.execution.service import ExecutionService
from workers.background import BackgroundTaskManager
from workers.celery_app import celery_app

log = structlog.get_logger(__name__)


class _ProcessService:
    """The ExecutionService of this worker process (rebuilt in a forked child)."""

    def __init__(self) -> None:
        self._service: ExecutionService | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> ExecutionService:
        service = self._service
        if service is None or self._pid != os.getpid():
            with self._lock:
                if self._service is None or self._pid != os.getpid():
                    self._service = build_service(background_tasks=_dispatcher)
                    self._pid = os.getpid()
                service = self._service
        return service

    def built(self) -> ExecutionService | None:
        """The service if this process built it already (never builds)."""
        return self._service if self._pid == os.getpid() else None

    def reset(self) -> None:
        with self._lock:
            self._service = None


def _dispatcher(control_hub: ControlHub) -> BackgroundTaskManager:
    return BackgroundTaskManager(celery_app, control_hub)


_process = _ProcessService()


def get_service() -> ExecutionService:
    """This worker process's ExecutionService."""
    return _process.get()


@signals.worker_process_init.connect
def _build_in_child(**_: Any) -> None:
    _process.reset()
    _process.get()


@signals.worker_init.connect
def _build_in_worker(**_: Any) -> None:
    _process.get()


@signals.worker_shutting_down.connect
def _hand_back_on_warm_shutdown(how: str | None = None, **_: Any) -> None:
    """SIGTERM: running executions go back to QUEUED (new attempt) at their next step boundary,
    or mid-call after WORKER_SHUTDOWN_GRACE, so the warm shutdown ends within the grace instead
    of waiting for every run to finish. Runs in Celery's signal handler: it only sets flags.
    (The threads and solo pools run tasks in this process; prefork children are not reached.)"""
    service = _process.built()
    if how == "Warm" and service is not None and service.control_hub is not None:
        service.control_hub.drain(service.settings.worker_shutdown_grace)


@celery_app.task(name=RUN_EXECUTION, bind=True, ignore_result=True)
def run_execution(self, execution_id: str, attempt: int) -> str:  # type: ignore[no-untyped-def]
    """Claim the attempt and run it; a duplicate or stale delivery claims nothing and exits."""
    with structlog.contextvars.bound_contextvars(execution_id=execution_id, attempt=attempt):
        outcome = get_service().run_attempt(
            uuid.UUID(execution_id), int(attempt), worker=self.request.hostname or "worker"
        )
        log.info("run finished", outcome=outcome.value)
        return outcome.value


@celery_app.task(name=REAP, ignore_result=True)
def reap() -> dict[str, int]:
    """Recover stale executions (one reaper at a time across the cluster)."""
    return get_service().reap()
