"""Celery tasks: run one attempt of an execution; reap stale ones. Both tiny, like web views."""

from __future__ import annotations

import uuid
from functools import lru_cache

import structlog

from app.bootstrap import build_service
from app.execution.reaper import Reaper
from app.execution.service import ExecutionService
from workers.background import BackgroundTaskManager
from workers.celery_app import celery_app

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def get_service() -> ExecutionService:
    """This process's ExecutionService, built on first use (after any fork)."""
    manager = BackgroundTaskManager(celery_app)
    service = build_service(background_tasks=manager)
    manager.control_hub = service.control_hub
    return service


@celery_app.task(name="agentexec.run_execution", bind=True, ignore_result=True)
def run_execution(self, execution_id: str, attempt: int) -> str:  # type: ignore[no-untyped-def]
    """Claim the attempt and run it; a duplicate or stale delivery claims nothing and exits."""
    with structlog.contextvars.bound_contextvars(execution_id=execution_id, attempt=attempt):
        outcome = get_service().task_runner.run(
            uuid.UUID(execution_id), int(attempt), worker=self.request.hostname or "worker"
        )
        log.info("run finished", outcome=outcome)
        return outcome


@celery_app.task(name="agentexec.reap", ignore_result=True)
def reap() -> dict[str, int]:
    """Recover stale executions (one reaper at a time across the cluster)."""
    return Reaper(get_service()).run_once()
