"""Worker and beat logging: structlog via Celery's signals, with the run's ids on every line.

Connecting `setup_logging` makes Celery leave logging to `configure_logging` (no
handlers of its own, no stdout redirection). Around each `agentexec.run_execution`
the context is reset and `execution_id` and `attempt` are bound, so Celery's own
"received/succeeded" lines and every line of the run carry them, and nothing leaks
into the next task run by the same thread.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import signals

from app.config import get_settings
from app.execution.dispatch import RUN_EXECUTION
from app.logging import configure_logging


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Configure structured logs at the level given on the command line (--loglevel)."""
    configure_logging(get_settings(), level=loglevel or None)


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    """Start every task with a clean context; a run binds its execution id and attempt."""
    structlog.contextvars.clear_contextvars()
    if getattr(task, "name", None) == RUN_EXECUTION and args and len(args) >= 2:
        structlog.contextvars.bind_contextvars(execution_id=str(args[0]), attempt=int(args[1]))


@signals.task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    """Drop the task's context so the thread's next task starts clean."""
    structlog.contextvars.clear_contextvars()
