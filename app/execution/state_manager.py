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
from app.execution.statements import DELAY_SECONDS
from app.execution.transitions import sources_of, validate_transition
from app.models import Execution, ExecutionEvent
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


_NOW = func.now()
_NEXT_ATTEMPT = Execution.attempt + 1
_ENTERING_QUEUED: dict[str, Any] = {
    "attempt": _NEXT_ATTEMPT,
    "queued_at": _NOW,
    "celery_task_id": func.concat(cast(Execution.id, String), "-", _NEXT_ATTEMPT),
    "progress_percentage": 0,
    "progress_message": "Queued",
    "worker": None,
    "heartbeat_at": None,
    "deadline_at": None,
    "completed_at": None,
    "result": None,
    "error_message": None,
}
_ENTERING_QUEUED_LATER = _ENTERING_QUEUED | {
    "queued_at": _NOW + func.make_interval(0, 0, 0, 0, 0, 0, DELAY_SECONDS),
}
# A new execution inserted already QUEUED (the row has no earlier attempt to read).
_FIRST_QUEUED: dict[str, Any] = {
    "state": S.QUEUED.value,
    "attempt": 1,
    "queued_at": _NOW,
    "progress_percentage": 0,
    "progress_message": "Queued",
}
_ENTERING_RUNNING: dict[str, Any] = {
    "started_at": func.coalesce(Execution.started_at, _NOW),
    "heartbeat_at": _NOW,
    "deadline_at": _NOW + Execution.timeout_seconds * literal_column("interval '1 second'"),
    "progress_message": "Initialize",
}
_ENTERING_FINISHED: dict[str, Any] = {"completed_at": _NOW}


def entry_values(target: ExecutionState, *, delay: float = 0) -> dict[str, Any]:
    """Columns set in the same UPDATE when `target` is entered (DESIGN.md 'Side effects').

    A delayed QUEUED reads the named parameter `delay_seconds` (see `entry_params`).
    """
    if target is S.QUEUED:
        return dict(_ENTERING_QUEUED_LATER if delay else _ENTERING_QUEUED)
    if target is S.RUNNING:
        return dict(_ENTERING_RUNNING)
    if target in FINISHED_STATES:
        return dict(_ENTERING_FINISHED)
    return {}


def entry_params(target: ExecutionState, *, delay: float = 0) -> dict[str, Any]:
    """The named parameters of `entry_values(target, delay=delay)`."""
    return {"delay_seconds": float(delay)} if target is S.QUEUED and delay else {}


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
        with self.repository.autocommit() as session:  # the transition is ONE statement
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
        """The transition's writes inside the caller's transaction (the caller commits).

        The guarded UPDATE, the history row and the event rows are ONE statement. Without
        `expected_state` the statement accepts any state the table allows into `target`
        and reads (under the row lock) the state it replaces.
        """
        current = ExecutionState(expected_state) if expected_state else None
        if current is not None and not validate_transition(current, target):
            raise InvalidExecutionStateError(execution_id, current, target)
        sources = None if current is not None else sources_of(target)
        if sources is not None and not sources:  # nothing leads there (PENDING): say from where
            self._explain_refusal(session, execution_id, current, target, expected_attempt, tenant)
        emitter = self.event_emitter
        specs = [emitter.progress_spec()] if progress_event else []
        specs.append(emitter.state_changed_spec(current, reason, previous_from_row=current is None))
        if target in FINISHED_STATES:
            specs.append(emitter.completed_spec())
        row, logged, previous = self.repository.transition(
            execution_id,
            target,
            expected_state=current,
            sources=sources,
            expected_attempt=expected_attempt,
            tenant=tenant,
            values=entry_values(target, delay=delay) | (values or {}),
            reason=reason,
            events=specs,
            params=entry_params(target, delay=delay),
            session=session,
        )
        if row is None:
            self._explain_refusal(session, execution_id, current, target, expected_attempt, tenant)
        assert row is not None and previous is not None
        return Transition(row, previous, target, reason, events=logged, delay=delay)

    def create(
        self, values: dict[str, Any], *, start: bool = True, tenant: str | None = None
    ) -> Execution | None:
        """Insert a new execution PENDING and, when `start`, QUEUED (attempt 1): ONE statement
        writes the row, both history rows and both state_changed events; then publish and
        send the task. None (nothing written) when the agent does not exist in `tenant`."""
        emitter = self.event_emitter
        history: list[tuple[str | None, str, str | None]] = [(None, S.PENDING.value, "created")]
        specs = [emitter.state_changed_spec(None, "created", new_state=S.PENDING)]
        row_values = dict(values) | {"state": S.PENDING.value}
        if start:
            history.append((S.PENDING.value, S.QUEUED.value, "submitted"))
            specs.append(emitter.state_changed_spec(S.PENDING, "submitted"))
            row_values |= _FIRST_QUEUED | {"celery_task_id": f"{values['id']}-1"}
        row, logged = self.repository.create_logged(row_values, history=history, events=specs,
                                                    agent_tenant=tenant)
        if row is None:
            return None
        if start:
            self.after_commit([Transition(row, S.PENDING, S.QUEUED, "submitted", events=logged)])
        else:
            emitter.publish(logged)
        return row

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

    def _explain_refusal(
        self,
        session: Session,
        execution_id: uuid.UUID,
        expected: ExecutionState | None,
        target: ExecutionState,
        expected_attempt: int | None,
        tenant: str | None,
    ) -> None:
        stmt = select(Execution.state, Execution.attempt).where(Execution.id == execution_id)
        if tenant is not None:
            stmt = stmt.where(Execution.tenant == tenant)
        row = session.execute(stmt).one_or_none()
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

