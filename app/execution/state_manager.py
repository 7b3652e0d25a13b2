"""ExecutionStateManager: the only way an execution changes state.

A transition is ONE transaction: the guarded UPDATE (`WHERE state = :current`, and
`AND attempt = :attempt` for a worker's writes), the history row and the event rows.
After the commit the events are published and the side effects of the entered state
run (send the Celery task, signal the worker). Of two racing transitions exactly one
wins; the other raises InvalidExecutionStateError.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from sqlalchemy import String, cast, func, literal_column, select
from sqlalchemy.orm import Session

from app.errors import ExecutionNotFoundError, InvalidExecutionStateError
from app.execution.event_emitter import ExecutionEventEmitter
from app.execution.repository import ExecutionRepository, _wrap_db_errors, commit
from app.execution.transitions import validate_transition
from app.models import Execution, ExecutionEvent, ExecutionStateHistory
from app.schemas import FINISHED_STATES, ExecutionState

log = structlog.get_logger(__name__)
S = ExecutionState


class TaskDispatcher(Protocol):
    """What the state manager needs from the BackgroundTaskManager (Celery lives in workers/)."""

    def start_task(
        self, execution_id: uuid.UUID, attempt: int, *, queue: str, priority: int, countdown: float = 0
    ) -> Any: ...

    def cancel_task(self, execution_id: uuid.UUID, attempt: int | None = None) -> None: ...

    def signal_task(self, execution_id: uuid.UUID, command: str) -> None: ...


def _entering_queued(delay: float) -> dict[str, Any]:
    queued_at = func.now() if not delay else func.now() + func.make_interval(0, 0, 0, 0, 0, 0, delay)
    return {
        "attempt": Execution.attempt + 1,
        "queued_at": queued_at,
        "celery_task_id": func.concat(cast(Execution.id, String), "-", Execution.attempt + 1),
        "progress_percentage": 0,
        "progress_message": "Queued",
        "worker": None,
        "heartbeat_at": None,
        "deadline_at": None,
        "completed_at": None,
        "result": None,
        "error_message": None,
    }


def _entering_running() -> dict[str, Any]:
    return {
        "started_at": func.coalesce(Execution.started_at, func.now()),
        "heartbeat_at": func.now(),
        "deadline_at": func.now() + Execution.timeout_seconds * literal_column("interval '1 second'"),
        "progress_message": "Initialize",
    }


def entry_values(target: ExecutionState, *, delay: float = 0) -> dict[str, Any]:
    """Columns set in the same UPDATE when `target` is entered (DESIGN.md 'Side effects')."""
    if target is S.QUEUED:
        return _entering_queued(delay)
    if target is S.RUNNING:
        return _entering_running()
    if target in FINISHED_STATES:
        return {"completed_at": func.now()}
    return {}


@dataclass
class Transition:
    """A committed-or-about-to-commit transition and the events it recorded."""

    execution: Execution
    previous_state: ExecutionState
    new_state: ExecutionState
    reason: str | None
    events: list[ExecutionEvent] = field(default_factory=list)
    delay: float = 0


class ExecutionStateManager:
    """Manages execution state transitions ensuring validation rules are followed."""

    def __init__(
        self,
        repository: ExecutionRepository,
        event_emitter: ExecutionEventEmitter,
        background_tasks: TaskDispatcher | None = None,
        on_transition: Callable[[Transition], None] | None = None,
    ):
        self.repository = repository
        self.event_emitter = event_emitter
        self.background_tasks = background_tasks
        self.on_transition = on_transition

    def validate_transition(self, current_state: ExecutionState, target_state: ExecutionState) -> bool:
        """True when the table allows `current_state -> target_state`."""
        return validate_transition(current_state, target_state)

    def change_state(
        self,
        execution_id: uuid.UUID,
        target_state: ExecutionState,
        reason: str | None = None,
        *,
        expected_state: ExecutionState | None = None,
        expected_attempt: int | None = None,
        values: dict[str, Any] | None = None,
        tenant: str | None = None,
        delay: float = 0,
        progress_event: bool = False,
    ) -> Execution:
        """Move the execution to `target_state` in one transaction, then publish and act.

        Raises ExecutionNotFoundError, InvalidExecutionStateError, DatabaseError.
        """
        with self.repository.session_factory() as session:
            tr = self.transition_in(
                session,
                execution_id,
                ExecutionState(target_state),
                reason,
                expected_state=expected_state,
                expected_attempt=expected_attempt,
                values=values,
                tenant=tenant,
                delay=delay,
                progress_event=progress_event,
            )
            commit(session)
        self.after_commit([tr])
        return tr.execution

    @_wrap_db_errors
    def transition_in(
        self,
        session: Session,
        execution_id: uuid.UUID,
        target: ExecutionState,
        reason: str | None = None,
        *,
        expected_state: ExecutionState | None = None,
        expected_attempt: int | None = None,
        values: dict[str, Any] | None = None,
        tenant: str | None = None,
        delay: float = 0,
        progress_event: bool = False,
    ) -> Transition:
        """The transition's writes inside the caller's transaction (the caller commits)."""
        current = ExecutionState(expected_state) if expected_state else None
        if current is None:
            current = self._current_state(session, execution_id, tenant)
        if not validate_transition(current, target):
            raise InvalidExecutionStateError(execution_id, current, target)
        if tenant is not None and expected_state is not None:
            self._current_state(session, execution_id, tenant)
        row = self.repository.update_state(
            execution_id,
            target,
            expected_state=current,
            expected_attempt=expected_attempt,
            values=entry_values(target, delay=delay) | (values or {}),
            session=session,
        )
        if row is None:
            self._explain_refusal(session, execution_id, current, target, expected_attempt, tenant)
        assert row is not None
        session.add(
            ExecutionStateHistory(
                execution_id=execution_id, from_state=current.value, to_state=target.value, reason=reason
            )
        )
        tr = Transition(row, current, target, reason, delay=delay)
        if progress_event:
            tr.events.append(self.event_emitter.emit_progress_updated(row, session=session))
        tr.events.append(self.event_emitter.emit_state_changed(row, current, reason, session=session))
        if target in FINISHED_STATES:
            tr.events.append(self.event_emitter.emit_execution_completed(row, session=session))
        session.flush()
        return tr

    def after_commit(self, transitions: list[Transition]) -> None:
        """Publish the committed events, then run each entered state's side effects."""
        self.event_emitter.publish(ev for tr in transitions for ev in tr.events)
        for tr in transitions:
            self.handle_state_side_effects(tr.execution, tr.previous_state, tr.new_state, delay=tr.delay)
            if self.on_transition is not None:
                self.on_transition(tr)

    def handle_state_side_effects(
        self,
        execution: Execution,
        previous_state: ExecutionState,
        new_state: ExecutionState,
        *,
        delay: float = 0,
    ) -> None:
        """After commit: QUEUED sends the task; PAUSING/CANCELLING signal the worker;
        CANCELLED from QUEUED revokes the message. Timestamps and the completed event
        were written in the transition itself. A failure here is logged, never raised:
        the reaper re-sends QUEUED executions whose message was lost."""
        bg = self.background_tasks
        if bg is None:
            return
        try:
            if new_state is S.QUEUED:
                bg.start_task(
                    execution.id,
                    execution.attempt,
                    queue=execution.queue,
                    priority=execution.priority,
                    countdown=delay,
                )
            elif new_state is S.CANCELLING:
                bg.cancel_task(execution.id, execution.attempt)
            elif new_state is S.PAUSING:
                bg.signal_task(execution.id, "pause")
            elif new_state is S.CANCELLED and previous_state is S.QUEUED:
                bg.cancel_task(execution.id, execution.attempt)
        except Exception as exc:  # the broker is transport; PostgreSQL already holds the truth
            log.warning(
                "side effect failed; the reaper will catch up",
                execution_id=str(execution.id),
                state=new_state.value,
                error=str(exc),
            )

    @staticmethod
    def _current_state(session: Session, execution_id: uuid.UUID, tenant: str | None) -> ExecutionState:
        stmt = select(Execution.state).where(Execution.id == execution_id)
        if tenant is not None:
            stmt = stmt.where(Execution.tenant == tenant)
        state = session.scalar(stmt)
        if state is None:
            raise ExecutionNotFoundError(execution_id)
        return ExecutionState(state)

    def _explain_refusal(
        self,
        session: Session,
        execution_id: uuid.UUID,
        expected: ExecutionState,
        target: ExecutionState,
        expected_attempt: int | None,
        tenant: str | None,
    ) -> None:
        row = session.execute(
            select(Execution.state, Execution.attempt).where(Execution.id == execution_id)
        ).one_or_none()
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        if expected_attempt is not None and row.attempt != expected_attempt:
            raise InvalidExecutionStateError(
                execution_id,
                row.state,
                target,
                f"execution {execution_id} is at attempt {row.attempt}, not {expected_attempt}",
            )
        raise InvalidExecutionStateError(execution_id, row.state, target)

