"""The exception tree of agentexec: small, typed, one line each."""

from __future__ import annotations

from typing import Any


class AgentExecError(Exception):
    """Base of every error agentexec raises on purpose."""


class ExecutionNotFoundError(AgentExecError):
    """No execution with that id (for this tenant)."""

    def __init__(self, execution_id: Any):
        super().__init__(f"execution {execution_id} not found")
        self.execution_id = execution_id


class AgentNotFoundError(AgentExecError):
    """No agent with that id (for this tenant)."""

    def __init__(self, agent_id: Any):
        super().__init__(f"agent {agent_id} not found")
        self.agent_id = agent_id


class ScheduleNotFoundError(AgentExecError):
    """No schedule with that id (for this tenant)."""

    def __init__(self, schedule_id: Any):
        super().__init__(f"schedule {schedule_id} not found")
        self.schedule_id = schedule_id


class InvalidExecutionStateError(AgentExecError):
    """The execution is not in a state that allows the requested change."""

    def __init__(self, execution_id: Any, current_state: Any, target_state: Any, detail: str = ""):
        cur = getattr(current_state, "value", current_state)
        tgt = getattr(target_state, "value", target_state)
        msg = detail or f"execution {execution_id} cannot go from {cur} to {tgt}"
        super().__init__(msg)
        self.execution_id = execution_id
        self.current_state = current_state
        self.target_state = target_state


class NoSlotError(InvalidExecutionStateError):
    """The claim found every concurrency slot of the execution's agent or tenant taken: it
    stays QUEUED with waiting_reason "concurrency_limit" until a slot frees."""

    def __init__(self, execution_id: Any):
        super().__init__(
            execution_id, "QUEUED", "RUNNING", f"execution {execution_id} waits for a concurrency slot"
        )


class InvalidProgressError(AgentExecError):
    """A progress report that would lower the percentage within an attempt."""


class ConflictError(AgentExecError):
    """The request conflicts with existing data (a taken name, a reused idempotency key)."""


class TaskBusyError(ConflictError):
    """on_conflict=reject: the tenant already has an active execution with this task_id."""

    def __init__(self, task_id: Any, active_id: Any):
        super().__init__(f"task {task_id} already has an active execution: {active_id}")
        self.task_id = task_id
        self.active_execution_id = active_id


class WebhookNotFoundError(AgentExecError):
    """No webhook (or no delivery of it) with that id (for this tenant)."""

    def __init__(self, kind: str, object_id: Any):
        super().__init__(f"{kind} {object_id} not found")
        self.object_id = object_id


class WebhookUrlRefusedError(AgentExecError):
    """A webhook URL the outbound guard refuses (scheme, or a non-public address not allow-listed)."""


class UnprocessableError(AgentExecError):
    """A well-formed request that cannot apply: tool outputs that do not match the pending
    calls, an http tool whose url the outbound guard refuses (422)."""


class BudgetExceededError(AgentExecError):
    """A token budget is spent: the execution's max_tokens, or its agent's daily budget.

    `retry_after` is the seconds until the daily budget renews (next UTC midnight), or
    None for max_tokens (that execution cannot continue)."""

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ModelOrchestrationError(AgentExecError):
    """The model service failed; `retryable` says whether another attempt may succeed."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class DatabaseError(AgentExecError):
    """PostgreSQL failed in a way the caller cannot fix (down, constraint, timeout)."""


class DatabaseUnavailableError(DatabaseError):
    """PostgreSQL cannot be reached right now; the same call may succeed later."""


class ExecutionInterrupted(AgentExecError):
    """A running execution was told to stop: `kind` is cancel, pause or timeout."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind
