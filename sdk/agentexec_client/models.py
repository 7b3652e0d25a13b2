"""The resources of the agentexec API as pydantic models, mirroring /openapi.json.

Each answer model carries the component schema it mirrors in `SCHEMA` (the drift test
compares their fields). Answer models keep fields a newer server adds (`extra="allow"`),
so an older client still reads them; request models send only the fields given.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PrivateAttr


class ExecutionState(str, enum.Enum):
    """The states an execution can be in (the `ExecutionState` schema)."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSING = "PAUSING"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REQUIRES_ACTION = "REQUIRES_ACTION"  # an agent waits for tool outputs (Client.respond)

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        """True for the states an execution never leaves by itself."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED, ExecutionState.TIMED_OUT}
)


class ErrorCode(str, enum.Enum):
    """Why an execution ended FAILED, TIMED_OUT or CANCELLED (the `ErrorCode` schema)."""

    MODEL_ERROR = "model_error"
    MODEL_ERROR_PERMANENT = "model_error_permanent"
    RETRIES_EXHAUSTED = "retries_exhausted"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    AGENT_NOT_FOUND = "agent_not_found"
    BUDGET_EXCEEDED = "budget_exceeded"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"
    MAX_TURNS_EXCEEDED = "max_turns_exceeded"
    ACTION_EXPIRED = "action_expired"

    def __str__(self) -> str:
        return self.value


class OnConflict(str, enum.Enum):
    """What a create does while an execution with its task_id is active (the `OnConflict` schema)."""

    ALLOW = "allow"
    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"

    def __str__(self) -> str:
        return self.value


class WaitingReason(str, enum.Enum):
    """Why a QUEUED execution does not run yet (the `WaitingReason` schema)."""

    CONCURRENCY_LIMIT = "concurrency_limit"
    TASK_BUSY = "task_busy"

    def __str__(self) -> str:
        return self.value


def _known(kind: type[enum.Enum]) -> BeforeValidator:
    """The member of `kind` for a known value; an unknown one stays a str (a newer server's)."""

    def read(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            return value

    return BeforeValidator(read)


# In answers: a code, policy or reason a newer server adds arrives as its str, never as an error.
ErrorCodeValue = Annotated[ErrorCode | str, _known(ErrorCode)]
OnConflictValue = Annotated[OnConflict | str, _known(OnConflict)]
WaitingReasonValue = Annotated[WaitingReason | str, _known(WaitingReason)]
UsageGroup = Literal["agent", "day", "agent_day"]


class Model(BaseModel):
    """An answer of the API; fields a newer server adds are kept, not refused."""

    model_config = ConfigDict(extra="allow")
    SCHEMA: ClassVar[str]


class RequestModel(BaseModel):
    """A request body; only the fields that were given are sent (the server fills defaults)."""

    model_config = ConfigDict(extra="forbid")
    SCHEMA: ClassVar[str]

    def body(self) -> dict[str, Any]:
        """The JSON body: the fields set, nothing else."""
        return self.model_dump(mode="json", exclude_unset=True)


# ------------------------------------------------------------------ agents


class Agent(Model):
    """A named model configuration."""

    SCHEMA = "AgentOut"
    id: uuid.UUID
    name: str
    model: str
    system_prompt: str
    parameters: dict[str, Any]
    max_concurrency: int | None
    """At most this many of its executions RUNNING or PAUSING at once; None: no limit."""
    on_conflict: OnConflictValue | None
    """The default collision policy of its executions' task_id; None: allow."""
    daily_token_budget: int | None
    """Tokens all its executions may use per UTC day; None: no budget."""
    tools: list[dict[str, Any]] = []
    """Tools its `agent` tasks may call: [{name, description, parameters, kind, url}]."""
    created_at: datetime
    updated_at: datetime


class AgentPage(Model):
    """A page of agents, by name."""

    SCHEMA = "AgentPage"
    items: list[Agent]
    total: int
    page: int
    page_size: int


class AgentCreate(RequestModel):
    """The body of POST /v1/agents."""

    SCHEMA = "AgentCreateBody"
    name: str
    model: str | None = None
    system_prompt: str | None = None
    parameters: dict[str, Any] | None = None
    max_concurrency: int | None = None
    on_conflict: OnConflict | None = None
    daily_token_budget: int | None = None
    tools: list[dict[str, Any]] | None = None


class AgentUpdate(RequestModel):
    """The body of PATCH /v1/agents/{id}: any subset of the fields (a limit set to None is removed)."""

    SCHEMA = "AgentUpdateBody"
    name: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    parameters: dict[str, Any] | None = None
    max_concurrency: int | None = None
    on_conflict: OnConflict | None = None
    daily_token_budget: int | None = None
    tools: list[dict[str, Any]] | None = None


# -------------------------------------------------------------- executions


class Progress(Model):
    """How far the current attempt is."""

    SCHEMA = "Progress"
    percentage: float
    message: str | None


class Usage(Model):
    """Tokens an execution used so far, every model call and attempt together."""

    SCHEMA = "Usage"
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Execution(Model):
    """A run of an agent on a task."""

    SCHEMA = "ExecutionOut"
    id: uuid.UUID
    agent_id: uuid.UUID
    task_id: uuid.UUID | None
    """The caller's own id for the task (several executions may share it); None when not given."""
    parameters: dict[str, Any]
    state: ExecutionState
    progress: Progress
    context: dict[str, Any]
    result: dict[str, Any] | None
    error_message: str | None
    error_code: ErrorCodeValue | None
    """Why it ended FAILED, TIMED_OUT or CANCELLED (an `ErrorCode`); None otherwise."""
    waiting_reason: WaitingReasonValue | None
    """Why a QUEUED execution does not run yet (a `WaitingReason`); None when it only waits for a worker."""
    max_tokens: int | None
    """Its token budget, every model call and attempt together; None: none."""
    usage: Usage
    attempt: int
    celery_task_id: str | None
    """The Celery task id of the current attempt (`<id>-<attempt>`, as in Flower); None until first queued."""
    max_retries: int
    timeout_seconds: int
    queue: str
    priority: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    scheduled_at: datetime | None = None
    """When a delayed start (`start_at`, `delay_seconds`, a schedule's tick) is due; None otherwise."""
    required_action: dict[str, Any] | None = None
    """REQUIRES_ACTION: {type: submit_tool_outputs, tool_calls: [{id, name, arguments}], expires_at}."""
    _created: bool | None = PrivateAttr(default=None)

    @property
    def created(self) -> bool | None:
        """From `executions.create()`: True when this call made it, False when an execution with
        the same idempotency key existed already (the API answered 200); None otherwise."""
        return self._created

    @property
    def is_final(self) -> bool:
        """True once the execution has ended (completed, failed, cancelled or timed out)."""
        return self.state in FINAL_STATES

    @property
    def output(self) -> str | None:
        """The text the run produced (`result["output"]`), if any."""
        value = (self.result or {}).get("output")
        return value if isinstance(value, str) else None


class ExecutionPage(Model):
    """A page of executions, newest first (`total` is an estimate unless `total_exact`)."""

    SCHEMA = "ExecutionPage"
    items: list[Execution]
    total: int
    total_exact: bool = True
    page: int
    page_size: int


class PipelineStep(RequestModel):
    """One model call of a pipeline; the prompt may use {input} and {steps.<name>}."""

    SCHEMA = "PipelineStep"
    name: str
    prompt: str


class SimulateOptions(RequestModel):
    """Knobs of the simulated model provider (for demos and tests)."""

    SCHEMA = "SimulateOptions"
    latency_ms: int | None = None
    fail_times: int | None = None
    fail_permanently: bool | None = None
    chunks: int | None = None
    tool_calls: list[list[dict[str, Any]]] | None = None


class ExecutionParameters(RequestModel):
    """What to run: the task type, its input, pipeline steps and simulation knobs."""

    SCHEMA = "ExecutionParameters"
    model_config = ConfigDict(extra="allow")
    type: str | None = None
    input: str | None = None
    steps: list[PipelineStep] | None = None
    max_turns: int | None = None
    simulate: SimulateOptions | None = None


class ExecutionCreate(RequestModel):
    """The body of POST /v1/executions (`parameters` is checked by the server, not here)."""

    SCHEMA = "ExecutionCreateBody"
    agent_id: uuid.UUID
    parameters: dict[str, Any]
    task_id: uuid.UUID | None = None
    """Your own id for the task this execution works on; several executions may share it."""
    on_conflict: OnConflict | None = None
    """What to do while another execution with this task_id is active (default: the agent's, else allow)."""
    start: bool | None = None
    queue: str | None = None
    priority: int | None = None
    timeout_seconds: int | None = None
    max_retries: int | None = None
    max_tokens: int | None = None
    metadata: dict[str, Any] | None = None
    start_at: datetime | None = None
    """Start at this moment (with a time zone) instead of now: it waits PENDING until then."""
    delay_seconds: float | None = None
    """Start this many seconds after creation instead of now."""
    action_timeout_seconds: int | None = None
    """Agent tasks: how long a wait for tool outputs may last (default ACTION_TIMEOUT_SECONDS)."""


class HistoryItem(Model):
    """One accepted state transition (no from_state for the creation)."""

    SCHEMA = "HistoryItem"
    from_state: ExecutionState | None
    to_state: ExecutionState
    reason: str | None
    created_at: datetime


class History(Model):
    """The last transitions of an execution, oldest first."""

    SCHEMA = "HistoryOut"
    items: list[HistoryItem]


# ------------------------------------------------------------------- usage


class UsageItem(Model):
    """Tokens used by one agent, on one UTC day, or by one agent on one day (by `group_by`)."""

    SCHEMA = "UsageItem"
    agent_id: uuid.UUID | None
    """None when grouped by day only."""
    day: date | None
    """None when grouped by agent only."""
    executions: int
    """The executions that ended on the day(s)."""
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageReport(Model):
    """The answer of GET /v1/usage."""

    SCHEMA = "UsageOut"
    items: list[UsageItem]


class BulkSkip(Model):
    """An execution a bulk action left alone, and why."""

    SCHEMA = "BulkSkip"
    id: uuid.UUID
    state: ExecutionState | str | None
    """None when there is no such execution (for this tenant)."""
    reason: str


class BulkResult(Model):
    """What a bulk cancel or retry matched, changed (with dry_run: would change) and skipped."""

    SCHEMA = "BulkResult"
    matched: int
    changed: int
    skipped: list[BulkSkip]


# ------------------------------------------------------------------ errors


class FieldError(Model):
    """One invalid field of a request."""

    SCHEMA = "FieldError"
    loc: list[str | int]
    msg: str
    type: str


class Problem(Model):
    """An RFC 9457 problem: the body of every error answer."""

    SCHEMA = "Problem"
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


# ---------------------------------------------------------------- schedules


class Schedule(Model):
    """A cron schedule: each tick creates one execution of its agent."""

    SCHEMA = "ScheduleOut"
    id: uuid.UUID
    agent_id: uuid.UUID
    cron: str
    timezone: str
    parameters: dict[str, Any]
    task_id: uuid.UUID | None
    on_conflict: OnConflictValue | None
    enabled: bool
    next_run_at: datetime | None
    """The next tick (UTC); None while disabled."""
    last_run_at: datetime | None
    last_execution_id: uuid.UUID | None
    last_error: str | None
    """Why the last tick created no execution; None when it did."""
    created_at: datetime
    updated_at: datetime


class SchedulePage(Model):
    """A page of schedules, oldest first."""

    SCHEMA = "SchedulePage"
    items: list[Schedule]
    total: int
    page: int
    page_size: int


class ScheduleCreate(RequestModel):
    """The body of POST /v1/schedules."""

    SCHEMA = "ScheduleCreateBody"
    agent_id: uuid.UUID
    cron: str
    """5 fields: minute hour day-of-month month day-of-week."""
    timezone: str | None = None
    parameters: dict[str, Any]
    task_id: uuid.UUID | None = None
    on_conflict: OnConflict | None = None
    enabled: bool | None = None


class ScheduleUpdate(RequestModel):
    """The body of PATCH /v1/schedules/{id}: the fields given (task_id, on_conflict: None clears)."""

    SCHEMA = "ScheduleUpdateBody"
    agent_id: uuid.UUID | None = None
    cron: str | None = None
    timezone: str | None = None
    parameters: dict[str, Any] | None = None
    task_id: uuid.UUID | None = None
    on_conflict: OnConflict | None = None
    enabled: bool | None = None
