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
from datetime import datetime
from typing import Any

import structlog

from app.errors import ExecutionNotFoundError, InvalidExecutionStateError, NoSlotError, TaskBusyError
from app.execution.dispatch import TaskDispatcher, celery_task_id
from app.execution.event_emitter import EventSpec, ExecutionEventEmitter
from app.execution.repository import ExecutionRepository
from app.execution.transitions import sources_of, validate_transition
from app.execution.writer import Expr
from app.models import Execution, ExecutionEvent
from app.schemas import FINISHED_STATES, SLOT_STATES, ErrorCode, ExecutionState, OnConflict

log = structlog.get_logger(__name__)
S = ExecutionState


# Columns set in the same UPDATE when a state is entered (DESIGN.md "Side effects").
# Progress is monotonic per execution, across attempts: a requeue (retry, resume, handback)
# keeps the percentage the last attempt reached; only the message says it waits again.
_ENTERING_QUEUED: dict[str, Any] = {
    "attempt": Expr.NEXT_ATTEMPT,
    "queued_at": Expr.NOW,
    "celery_task_id": Expr.NEXT_TASK_ID,
    "progress_message": "Queued",
    "worker": None,
    "heartbeat_at": None,
    "deadline_at": None,
    "completed_at": None,
    "result": None,
    "error_message": None,
    "error_code": None,
    "waiting_reason": None,
    "required_action": None,  # an answered wait for tool outputs is over
    "action_expires_at": None,
}
# A new execution inserted already QUEUED (the row has no earlier attempt to read).
_FIRST_QUEUED: dict[str, Any] = {
    "state": S.QUEUED.value,
    "attempt": 1,
    "queued_at": Expr.NOW,
    "progress_percentage": 0,
    "progress_message": "Queued",
}
_ENTERING_RUNNING: dict[str, Any] = {
    "waiting_reason": None,
    "started_at": Expr.FIRST_STARTED_AT,
    "heartbeat_at": Expr.NOW,
    "deadline_at": Expr.DEADLINE,
    "progress_message": "Initialize",
}
# A QUEUED execution waiting for a slot or its task can end without running (cancel, an
# interrupt, a failed claim): an ended execution waits for nothing.
_ENTERING_FINISHED: dict[str, Any] = {
    "completed_at": Expr.NOW,
    "waiting_reason": None,
    "required_action": None,
    "action_expires_at": None,
}
# Waiting for tool outputs holds no worker: no heartbeat for the reaper to find stale, no
# deadline running (the wait has its own, action_expires_at, set by the writer of the wait).
_ENTERING_REQUIRES_ACTION: dict[str, Any] = {
    "worker": None,
    "heartbeat_at": None,
    "deadline_at": None,
    "progress_message": "Waiting for tool outputs",
}
# The error_code an end gets unless its writer names a more precise one.
_DEFAULT_ERROR_CODE: dict[ExecutionState, ErrorCode | None] = {
    S.COMPLETED: None,
    S.FAILED: ErrorCode.MODEL_ERROR,
    S.TIMED_OUT: ErrorCode.TIMEOUT,
    S.CANCELLED: ErrorCode.CANCELLED,
}


def entry_values(target: ExecutionState, *, delay: float = 0) -> dict[str, Any]:
    """Columns set in the same UPDATE when `target` is entered.

    A delayed QUEUED reads the named parameter `delay_seconds` (see `entry_params`).
    """
    if target is S.QUEUED:
        return _ENTERING_QUEUED | ({"queued_at": Expr.NOW_PLUS_DELAY} if delay else {})
    if target is S.RUNNING:
        return dict(_ENTERING_RUNNING)
    if target is S.REQUIRES_ACTION:
        return dict(_ENTERING_REQUIRES_ACTION)
    if target is S.CANCELLED:  # keeps "interrupted" if its CANCELLING said so
        return _ENTERING_FINISHED | {"error_code": Expr.CANCEL_CODE}
    if target in FINISHED_STATES:
        code = _DEFAULT_ERROR_CODE[target]
        return _ENTERING_FINISHED | {"error_code": None if code is None else code.value}
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
    agent: dict[str, Any] | None = None
    waiters: bool = False  # it gave back a concurrency slot that executions wait for
    task_waiters: bool = False  # it ended an execution whose task_id another one waits for


class ExecutionStateManager:
    """Manages execution state transitions ensuring validation rules are followed."""

    def __init__(
        self,
        repository: ExecutionRepository,
        event_emitter: ExecutionEventEmitter,
        background_tasks: TaskDispatcher | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        tenant_limit: int = 0,
    ):
        self.repository = repository
        self.event_emitter = event_emitter
        self.background_tasks = background_tasks
        self.on_transition = on_transition
        self.tenant_limit = tenant_limit  # TENANT_MAX_CONCURRENCY: tenants without their own limit

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
        from_states: frozenset[ExecutionState] | None = None,
        usage: dict[str, int] | None = None,
    ) -> Execution:
        """Move the execution to `target_state` in ONE statement, then publish and act.

        The guarded UPDATE, the history row and the event rows are one statement.
        Without `expected_state` it accepts any state the table allows into the target
        and reads (under the row lock) the state it replaces. With `progress_event` a
        progress event (of the values written) comes first.

        Raises ExecutionNotFoundError, InvalidExecutionStateError, DatabaseError.
        """
        target = ExecutionState(target_state)
        current = ExecutionState(expected_state) if expected_state else None
        if current is not None and not validate_transition(current, target):
            raise InvalidExecutionStateError(execution_id, current, target)
        sources = None if current is not None else (from_states or sources_of(target))
        if sources is not None and not sources:  # nothing leads there (PENDING): say from where
            self._explain_refusal(execution_id, current, target, expected_attempt, tenant)
        emitter = self.event_emitter
        specs = [emitter.progress()] if progress_event else []
        specs.append(emitter.state_changed(current, reason, previous_from_row=current is None))
        leaves_slot = target not in SLOT_STATES and (
            current in SLOT_STATES if current is not None else bool(SLOT_STATES & (sources or frozenset()))
        )
        if target in FINISHED_STATES:
            specs.append(emitter.completed())
        if target is S.REQUIRES_ACTION:
            specs.append(emitter.requires_action())
        transition = self._write(
            execution_id,
            target,
            reason,
            current,
            sources,
            expected_attempt,
            tenant,
            entry_values(target, delay=delay) | (values or {}),
            specs,
            entry_params(target, delay=delay),
            delay,
            slot="release" if leaves_slot else None,
            # Every end counts in its agent's day (the usage API's `executions`), with its tokens.
            usage=(usage or {}) | {"ended": 1} if target in FINISHED_STATES else usage,
        )
        self.after_commit([transition])
        return transition.execution

    def claim(
        self, execution_id: uuid.UUID, attempt: int, worker: str, progress_message: str
    ) -> tuple[Execution, dict[str, Any] | None]:
        """QUEUED -> RUNNING for this attempt, with the first progress report and the agent's
        settings read by the same statement: (the execution, the agent or None when it is gone).

        The first progress is 1/(steps + 2) of the run (the input step of a run of N steps).
        The claim takes a concurrency slot of the agent and the tenant in the same statement;
        when none is free the execution is marked waiting (NoSlotError) and the run that frees
        a slot sends it again. Raises InvalidExecutionStateError (a stale or duplicate
        delivery), NoSlotError and ExecutionNotFoundError.
        """
        emitter = self.event_emitter
        specs = [emitter.state_changed(S.QUEUED, f"claimed by {worker}"), emitter.progress()]
        values = entry_values(S.RUNNING) | {
            "worker": worker,
            "progress_percentage": Expr.FIRST_PROGRESS,
            "progress_message": progress_message,
        }
        for _ in range(3):  # a slot freed between the claim and the mark: claim again
            written = self.repository.transition(
                execution_id,
                S.RUNNING,
                expected_state=S.QUEUED,
                expected_attempt=attempt,
                values=values,
                reason=f"claimed by {worker}",
                events=specs,
                with_agent=True,
                slot="take",
                tenant_limit=self.tenant_limit,
            )
            if written.execution is not None:
                transition = Transition(
                    written.execution,
                    S.QUEUED,
                    S.RUNNING,
                    f"claimed by {worker}",
                    events=written.events,
                    agent=written.agent,
                )
                self.after_commit([transition])
                return transition.execution, transition.agent
            waiting = self.repository.mark_waiting(execution_id, attempt, self.tenant_limit)
            if waiting is True:
                log.info("no concurrency slot; waiting", execution_id=str(execution_id), attempt=attempt)
                raise NoSlotError(execution_id)
            if waiting is None:  # not QUEUED at this attempt any more: say why
                self._explain_refusal(execution_id, S.QUEUED, S.RUNNING, attempt, None)
        raise NoSlotError(execution_id)  # slots keep changing hands: wait for the next one

    def _write(
        self,
        execution_id: uuid.UUID,
        target: ExecutionState,
        reason: str | None,
        current: ExecutionState | None,
        sources: frozenset[ExecutionState] | None,
        expected_attempt: int | None,
        tenant: str | None,
        values: dict[str, Any],
        specs: list[EventSpec],
        params: dict[str, Any],
        delay: float,
        *,
        with_agent: bool = False,
        slot: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> Transition:
        written = self.repository.transition(
            execution_id,
            target,
            expected_state=current,
            sources=sources,
            expected_attempt=expected_attempt,
            tenant=tenant,
            values=values,
            reason=reason,
            events=specs,
            params=params,
            with_agent=with_agent,
            slot=slot,
            tenant_limit=self.tenant_limit,
            release_task=target in FINISHED_STATES,
            usage=usage,
        )
        if written.execution is None:
            self._explain_refusal(execution_id, current, target, expected_attempt, tenant)
        assert written.execution is not None
        previous = ExecutionState(written.previous_state or current)
        return Transition(
            written.execution,
            previous,
            target,
            reason,
            events=written.events,
            delay=delay,
            agent=written.agent,
            waiters=written.waiters,
            task_waiters=written.task_waiters,
        )

    def create(
        self,
        values: dict[str, Any],
        *,
        start: bool = True,
        tenant: str | None = None,
        keyed: bool = False,
        on_conflict: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Execution | None:
        """Insert a new execution PENDING and, when `start`, QUEUED (attempt 1): ONE statement
        writes the row, both history rows and both state_changed events; then publish and send
        the task. None (nothing written) when the agent does not exist in `tenant`, or (`keyed`)
        when the tenant already used the row's idempotency key.

        With a task_id the collision policy applies (`on_conflict`, else the agent's): its
        check and the insert are one transaction. Raises TaskBusyError (reject); an enqueued
        or interrupting execution waits ("task_busy") for the active ones to end, and with
        interrupt those are cancelled (error_code interrupted) once this one is committed."""
        emitter = self.event_emitter
        history: list[tuple[str | None, str, str | None]] = [(None, S.PENDING.value, "created")]
        specs = [emitter.state_changed(None, "created", new_state=S.PENDING)]
        row_values = dict(values) | {"state": S.PENDING.value}
        if start:
            history.append((S.PENDING.value, S.QUEUED.value, "submitted"))
            specs.append(emitter.state_changed(S.PENDING, "submitted"))
            row_values |= _FIRST_QUEUED | {"celery_task_id": celery_task_id(values["id"], 1)}
        policy, active = OnConflict.ALLOW.value, list[uuid.UUID]()
        if values.get("task_id") is None:
            written = self.repository.create_execution(
                row_values,
                history=history,
                events=specs,
                agent_tenant=tenant,
                skip_if_key_exists=keyed,
                params=params,
            )
        else:
            written, policy, active = self.repository.create_execution_for_task(
                row_values,
                history=history,
                events=specs,
                agent_tenant=tenant,
                skip_if_key_exists=keyed,
                on_conflict=on_conflict,
                params=params,
            )
            if written.execution is None and policy == OnConflict.REJECT.value and active:
                raise TaskBusyError(values["task_id"], active[0])
        row = written.execution
        if row is None:
            return None
        if start and row.waiting_reason is None:
            self.after_commit([Transition(row, S.PENDING, S.QUEUED, "submitted", events=written.events)])
        else:
            emitter.publish(written.events)
        if policy == OnConflict.INTERRUPT.value:
            for earlier in reversed(active):  # newest first: no hand-over to one about to go
                self.interrupt(earlier, by=row.id)
        return row

    def start_scheduled(self, *, now: datetime | None = None, limit: int = 500) -> list[Execution]:
        """Queue delayed executions whose `scheduled_at` has come (PENDING -> QUEUED, reason
        "scheduled start"), at most `limit`: the schedule tick's first half.

        The due rows are locked with SKIP LOCKED and moved by the same guarded write as POST
        .../start, in one transaction, so two tick passes never queue one twice and a cancel
        racing with the tick either wins or finds it QUEUED. `now` replaces the database's
        clock (tests). Then, as for every transition, publish and send the tasks.
        """
        reason = "scheduled start"
        emitter = self.event_emitter
        transitions: list[Transition] = []
        with self.repository.unit_of_work(operation="start_scheduled") as work:
            for execution_id in self.repository.due_scheduled(now, limit, uow=work):
                written = self.repository.transition(
                    execution_id,
                    S.QUEUED,
                    expected_state=S.PENDING,
                    values=entry_values(S.QUEUED),
                    reason=reason,
                    events=[emitter.state_changed(S.PENDING, reason)],
                    uow=work,
                )
                if written.execution is not None:
                    transitions.append(
                        Transition(written.execution, S.PENDING, S.QUEUED, reason, events=written.events)
                    )
        self.after_commit(transitions)
        return [t.execution for t in transitions]

    def interrupt(self, execution_id: uuid.UUID, *, by: uuid.UUID) -> Execution | None:
        """Cancel an execution for a newer one of its task (error_code interrupted): CANCELLING
        when a worker holds it, CANCELLED otherwise; None when it ended meanwhile."""
        reason = f"interrupted by {by}"
        values = {"error_code": ErrorCode.INTERRUPTED.value}
        for target, sources in (
            (S.CANCELLING, frozenset({S.RUNNING, S.PAUSING})),
            (S.CANCELLED, frozenset({S.PENDING, S.QUEUED, S.PAUSED, S.REQUIRES_ACTION})),
        ):
            try:
                return self.change_state(execution_id, target, reason, values=values, from_states=sources)
            except InvalidExecutionStateError:
                continue
        return None

    def after_commit(self, transitions: list[Transition]) -> None:
        """Publish the committed events, then run each entered state's side effects."""
        self.event_emitter.publish(ev for tr in transitions for ev in tr.events)
        for tr in transitions:
            self.handle_state_side_effects(tr.execution, tr.previous_state, tr.new_state, delay=tr.delay)
            if tr.waiters:
                self.wake_waiters(tr.execution.tenant, tr.execution.agent_id, 1)
            if tr.task_waiters and tr.execution.task_id is not None:
                self.wake_task_waiter(tr.execution.tenant, tr.execution.task_id)
            if self.on_transition is not None:
                self.on_transition(tr)

    def wake_task_waiter(self, tenant: str, task_id: uuid.UUID) -> bool:
        """Send the oldest execution waiting for `task_id` (enqueue, interrupt) to the workers,
        if none of the task's others is active any more. Called after a write that ended one
        of the task's executions, and by the reaper."""
        bg = self.background_tasks
        if bg is None:
            return False
        try:
            row = self.repository.take_task_waiter(tenant, task_id)
            if row is not None:
                bg.start_task(row.id, row.attempt, queue=row.queue, priority=row.priority)
        except Exception as exc:  # the reaper hands it over on its next pass
            log.warning("handing a task to its next execution failed; the reaper will", error=str(exc))
            return False
        return row is not None

    def wake_waiters(self, tenant: str, agent_id: uuid.UUID, count: int) -> int:
        """Send the best `count` executions waiting for a slot of this tenant (this agent's
        first, then by priority and age) to the workers again; how many were sent.

        Their claim takes the slot or marks them waiting again. Called by the write that
        gave a slot back (after its commit) and by the reaper, the backstop.
        """
        bg = self.background_tasks
        if bg is None or count <= 0:
            return 0
        try:
            rows = self.repository.take_waiters(tenant, agent_id, count)
            for row in rows:
                bg.start_task(row.id, row.attempt, queue=row.queue, priority=row.priority)
        except Exception as exc:  # the reaper wakes them on its next pass
            log.warning("waking a waiting execution failed; the reaper will", error=str(exc))
            return 0
        return len(rows)

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
        execution_id: uuid.UUID,
        expected: ExecutionState | None,
        target: ExecutionState,
        expected_attempt: int | None,
        tenant: str | None,
    ) -> None:
        row = self.repository.get_by_id(execution_id, tenant=tenant)
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
