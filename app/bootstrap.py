"""The composition root: builds ExecutionService from its parts, for API, worker and tests."""

from __future__ import annotations

from typing import Any

from app.commands import CommandBus, build_command_bus
from app.config import Settings, get_settings
from app.db import get_engine, make_session_factory
from app.events import EventBus
from app.execution.control import ControlHub
from app.execution.event_emitter import ExecutionEventEmitter
from app.execution.progress_tracker import ExecutionProgressTracker
from app.execution.repository import ExecutionRepository
from app.execution.service import ExecutionService
from app.execution.state_manager import ExecutionStateManager, TaskDispatcher
from app.execution.task_runner import ExecutionTaskRunner


def build_service(background_tasks: TaskDispatcher | None = None, **overrides: Any) -> ExecutionService:
    """Wire every component; keyword overrides replace parts (settings, session_factory,
    event_bus, command_bus, control_hub, on_transition). Opens no connection."""
    settings: Settings = overrides.get("settings") or get_settings()
    session_factory = overrides.get("session_factory") or make_session_factory(
        get_engine(settings.database_url, settings.database_pool_size, settings.database_max_overflow)
    )
    event_bus: EventBus = overrides.get("event_bus") or EventBus(settings.redis_url)
    command_bus: CommandBus = overrides.get("command_bus") or build_command_bus(settings)
    repository = ExecutionRepository(session_factory)
    event_emitter = ExecutionEventEmitter(event_bus)
    state_manager = ExecutionStateManager(
        repository, event_emitter, background_tasks, on_transition=overrides.get("on_transition")
    )
    progress_tracker = ExecutionProgressTracker(repository, event_emitter)
    control_hub = overrides.get("control_hub")
    if control_hub is None:
        control_hub = ControlHub(repository, event_bus, settings.heartbeat_interval)
    task_runner = ExecutionTaskRunner(
        repository, state_manager, progress_tracker, command_bus, settings, control_hub
    )
    service = ExecutionService(
        repository,
        state_manager,
        progress_tracker,
        event_emitter,
        task_runner,
        background_tasks,
        settings,
        event_bus=event_bus,
        control_hub=control_hub,
    )
    return service
