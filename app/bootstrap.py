"""The composition root: builds ExecutionService and every part it needs, for API, worker, CLI and tests.

Nothing else in the tree creates a component that holds a connection, a thread or a
cache: the API builds one service per process in its app factory, the worker one per
process when it starts (see workers/tasks.py), the CLI one per command. Keyword
overrides replace parts (settings, session_factory, event_bus, command_bus,
control_hub, on_transition). Building opens no connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.auth import ApiKeyStore
from app.commands import CommandBus, build_command_bus
from app.config import Settings
from app.db import get_engine, make_session_factory
from app.deltas import DeltaLog
from app.events import EventBus
from app.execution.control import ControlHub
from app.execution.dispatch import TaskDispatcher
from app.execution.event_emitter import ExecutionEventEmitter
from app.execution.progress_tracker import ExecutionProgressTracker
from app.execution.reaper import Reaper
from app.execution.repository import ExecutionRepository
from app.execution.scheduler import Scheduler
from app.execution.service import ExecutionService
from app.execution.state_manager import ExecutionStateManager
from app.execution.task_runner import ExecutionTaskRunner
from app.metrics import ExecutionStatsCollector
from app.ratelimit import RateLimiter

# The dispatcher, or a factory that makes it from the process's ControlHub (the Celery bridge
# signals running executions through it).
Dispatcher = TaskDispatcher | Callable[[ControlHub], TaskDispatcher] | None


def build_service(background_tasks: Dispatcher = None, **overrides: Any) -> ExecutionService:
    """Wire every component of one process; see the module docstring for the overrides."""
    settings: Settings = overrides.get("settings") or Settings()
    session_factory = overrides.get("session_factory") or make_session_factory(
        get_engine(
            settings.database_url,
            settings.database_pool_size,
            settings.database_max_overflow,
            settings.database_prepared_statements,
        )
    )
    event_bus: EventBus = overrides.get("event_bus") or EventBus(settings.redis_url)
    command_bus: CommandBus = overrides.get("command_bus") or build_command_bus(settings)
    repository = ExecutionRepository(session_factory)
    event_emitter = ExecutionEventEmitter(event_bus)
    control_hub: ControlHub = overrides.get("control_hub") or ControlHub(
        repository, event_bus, settings.heartbeat_interval
    )
    dispatcher = _dispatcher(background_tasks, control_hub)
    state_manager = ExecutionStateManager(
        repository,
        event_emitter,
        dispatcher,
        on_transition=overrides.get("on_transition"),
        tenant_limit=settings.tenant_max_concurrency,
    )
    progress_tracker = ExecutionProgressTracker(repository, event_emitter)
    deltas = (  # a test's fake bus has no Redis to keep deltas in
        DeltaLog(
            event_bus,
            retention_seconds=settings.delta_retention_seconds,
            maxlen=settings.delta_stream_maxlen,
        )
        if isinstance(event_bus, EventBus)
        else None
    )
    task_runner = ExecutionTaskRunner(
        repository, state_manager, progress_tracker, command_bus, settings, control_hub, deltas
    )
    service = ExecutionService(
        repository,
        state_manager,
        progress_tracker,
        event_emitter,
        task_runner,
        dispatcher,
        settings,
        event_bus=event_bus,
        control_hub=control_hub,
        reaper=Reaper(repository, state_manager, dispatcher, settings),
    )
    service.keys = ApiKeyStore(repository)
    service.rate_limiter = (
        RateLimiter(event_bus.client, settings.rate_limit, window=settings.rate_limit_window)
        if settings.rate_limit > 0
        else None
    )
    service.stats = ExecutionStatsCollector(repository.execution_stats)
    service.scheduler = Scheduler(repository, state_manager, settings, service.create_execution)
    return service


def _dispatcher(background_tasks: Dispatcher, control_hub: ControlHub) -> TaskDispatcher | None:
    if background_tasks is None or hasattr(background_tasks, "start_task"):
        return background_tasks  # type: ignore[return-value]
    return background_tasks(control_hub)
