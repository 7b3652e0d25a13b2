"""ExecutionState and the pydantic models that cross the service boundary."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.execution import cron


class ExecutionState(str, enum.Enum):
    """The eleven states an execution can be in."""

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
    # An agent asked for `client` tools: it waits, holding no worker and no slot, for
    # POST /v1/executions/{id}/input (then QUEUED with a new attempt).
    REQUIRES_ACTION = "REQUIRES_ACTION"


class WaitingReason(str, enum.Enum):
    """Why a QUEUED execution is not running yet (null when it only waits for a worker)."""

    CONCURRENCY_LIMIT = "concurrency_limit"  # its agent's or tenant's slots are all taken
    TASK_BUSY = "task_busy"  # on_conflict=enqueue: an earlier execution of its task_id is active


class OnConflict(str, enum.Enum):
    """What a create does when its tenant already has an active execution with its task_id."""

    ALLOW = "allow"  # run both
    REJECT = "reject"  # 409, naming the active execution
    ENQUEUE = "enqueue"  # wait (QUEUED, waiting_reason task_busy) until the earlier one ends
    INTERRUPT = "interrupt"  # cancel the earlier one (error_code interrupted), then start


class ErrorCode(str, enum.Enum):
    """Why an execution ended FAILED, TIMED_OUT or CANCELLED (null for every other state)."""

    MODEL_ERROR = "model_error"  # the model call failed and could not be retried
    MODEL_ERROR_PERMANENT = "model_error_permanent"  # the provider refused: retrying cannot help
    RETRIES_EXHAUSTED = "retries_exhausted"  # retryable model errors used up max_retries
    TIMEOUT = "timeout"  # the execution's deadline (timeout_seconds) passed
    WORKER_LOST = "worker_lost"  # workers died holding it until no retry was left
    AGENT_NOT_FOUND = "agent_not_found"  # its agent was deleted before it ran
    BUDGET_EXCEEDED = "budget_exceeded"  # max_tokens or the agent's daily token budget was spent
    INTERRUPTED = "interrupted"  # a newer execution with the same task_id replaced it
    CANCELLED = "cancelled"  # a user cancelled it
    INTERNAL_ERROR = "internal_error"  # an unexpected failure of agentexec itself (see the logs)
    MAX_TURNS_EXCEEDED = "max_turns_exceeded"  # an agent task asked for more model calls than max_turns
    ACTION_EXPIRED = "action_expired"  # nobody answered its required_action before expires_at


FINISHED_STATES = frozenset(
    {
        ExecutionState.COMPLETED,
        ExecutionState.FAILED,
        ExecutionState.TIMED_OUT,
        ExecutionState.CANCELLED,
    }
)
ACTIVE_STATES = frozenset(
    {
        ExecutionState.QUEUED,
        ExecutionState.RUNNING,
        ExecutionState.PAUSING,
        ExecutionState.CANCELLING,
    }
)
# The states that hold a concurrency slot (agents.max_concurrency, TENANT_MAX_CONCURRENCY).
SLOT_STATES = frozenset({ExecutionState.RUNNING, ExecutionState.PAUSING})
HELD_BY_WORKER = frozenset({ExecutionState.RUNNING, ExecutionState.PAUSING, ExecutionState.CANCELLING})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_START_DELAY_SECONDS = 366 * 86400  # start_at / delay_seconds: at most a year (and a day) ahead


def _rfc3339(value: Any) -> Any:
    """A date-time with a time zone (RFC 3339), not a number of seconds or a naive time."""
    if isinstance(value, int | float) or not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 date-time with a time zone, such as 2030-01-31T07:00:00Z")
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        raise ValueError("must have a time zone (Z or +01:00), such as 2030-01-31T07:00:00Z")
    return moment


RfcDateTime = Annotated[datetime, BeforeValidator(_rfc3339)]


class SimulateOptions(_Strict):
    """Knobs read by the simulated model provider."""

    latency_ms: int = Field(0, ge=0, le=600_000)
    fail_times: int = Field(0, ge=0, le=100)
    fail_permanently: bool = False
    chunks: int = Field(10, ge=1, le=1000)
    tool_calls: list[list[SimulatedToolCall]] | None = Field(
        None,
        max_length=100,
        description="agent tasks: the tool calls the model asks for, one list per turn; a turn "
        "with none, or past the list, gives the final answer",
    )


MAX_TURNS_DEFAULT = 8
MAX_TOOL_OUTPUT = 64 * 1024  # characters of one tool output (a submitted one, an http answer)
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class SimulatedToolCall(_Strict):
    """A tool call the simulated model asks for."""

    name: str = Field(pattern=TOOL_NAME)
    arguments: dict[str, Any] = Field(default_factory=dict)


class AgentTool(_Strict):
    """A tool an agent's model may call: `client` (the caller answers through POST
    /v1/executions/{id}/input) or `http` (the worker POSTs the call to `url`)."""

    name: str = Field(pattern=TOOL_NAME)
    description: str = Field("", max_length=4000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments, an object schema (as in OpenAI function calling)",
    )
    kind: Literal["client", "http"] = "client"
    url: str | None = Field(None, max_length=2000, description="http tools only: where the worker POSTs")

    @model_validator(mode="after")
    def _shape(self) -> AgentTool:
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be an object schema (type: object)")
        props = self.parameters.get("properties", {})
        if not isinstance(props, dict):
            raise ValueError(f"tool {self.name!r}: parameters.properties must be an object")
        if (self.kind == "http") != (self.url is not None):
            raise ValueError(f"tool {self.name!r}: a url is required for http tools and only for them")
        return self


def _unique_tool_names(tools: list[AgentTool] | None) -> list[AgentTool] | None:
    names = [t.name for t in tools or []]
    if len(set(names)) != len(names):
        raise ValueError("tool names must be unique")
    return tools


AgentTools = Annotated[list[AgentTool], AfterValidator(_unique_tool_names)]


class ToolCall(BaseModel):
    """One tool call of a model turn."""

    id: str
    name: str
    arguments: dict[str, Any]


class RequiredAction(BaseModel):
    """What an execution in REQUIRES_ACTION waits for."""

    type: Literal["submit_tool_outputs"] = "submit_tool_outputs"
    tool_calls: list[ToolCall]
    expires_at: datetime


class ToolOutput(_Strict):
    """The result of one client tool call."""

    tool_call_id: str = Field(min_length=1, max_length=200)
    output: str = Field(max_length=MAX_TOOL_OUTPUT, description="at most 64 KB")


class ToolOutputsSubmit(_Strict):
    """The body of POST /v1/executions/{id}/input: one output per pending tool call."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"tool_outputs": [{"tool_call_id": "call_1_0", "output": "42 degrees"}]}]
        },
    )

    tool_outputs: list[ToolOutput] = Field(min_length=1, max_length=128)


class PipelineStep(_Strict):
    """One model call of a pipeline; the prompt may use {input} and {steps.<name>}."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    prompt: str = Field(min_length=1, max_length=100_000)


class ExecutionParameters(BaseModel):
    """What to run: the task type, its input, pipeline steps and simulation knobs."""

    model_config = ConfigDict(extra="allow")

    type: Literal["standard", "pipeline", "agent"] = "standard"
    input: str = Field("", max_length=500_000)
    steps: list[PipelineStep] | None = None
    max_turns: int | None = Field(
        None, ge=1, le=100, description=f"agent tasks: model calls at most (default {MAX_TURNS_DEFAULT})"
    )
    simulate: SimulateOptions | None = None

    @model_validator(mode="after")
    def _pipeline_needs_steps(self) -> ExecutionParameters:
        if self.type == "pipeline":
            if not self.steps or not 1 <= len(self.steps) <= 50:
                raise ValueError("a pipeline needs 1 to 50 steps")
            names = [s.name for s in self.steps]
            if len(set(names)) != len(names):
                raise ValueError("pipeline step names must be unique")
        elif self.steps:
            raise ValueError("steps are only allowed for type 'pipeline'")
        if self.max_turns is not None and self.type != "agent":
            raise ValueError("max_turns is only allowed for type 'agent'")
        return self


class ExecutionCreate(_Strict):
    """The body of POST /v1/executions."""

    agent_id: uuid.UUID
    parameters: ExecutionParameters
    task_id: uuid.UUID | None = Field(
        None,
        description="The caller's own id for the task; several executions may share it "
        "(retries, follow-ups). `on_conflict` says what happens when one of them is still active.",
    )
    on_conflict: OnConflict | None = Field(
        None, description="Collision policy for task_id (default: the agent's, else allow)."
    )
    start: bool = True
    queue: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    priority: int = Field(5, ge=0, le=9)
    timeout_seconds: int | None = Field(None, gt=0, le=7 * 86400)
    max_retries: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=10**12,
        description="Token budget of the whole execution, every model call and attempt together; "
        "the call that would exceed it is not made and the execution fails with budget_exceeded.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    start_at: RfcDateTime | None = Field(
        None,
        description="Start later: it waits PENDING (`scheduled_at`) and is queued at this moment "
        "(RFC 3339 with a time zone; in the future, at most a year ahead). Not with delay_seconds.",
    )
    delay_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_START_DELAY_SECONDS,
        description="Start this many seconds after creation (waits PENDING until then). Not with start_at.",
    )
    action_timeout_seconds: int | None = Field(
        None,
        gt=0,
        le=30 * 86400,
        description="agent tasks: how long a wait for tool outputs (REQUIRES_ACTION) may last "
        "before it ends TIMED_OUT with action_expired (default ACTION_TIMEOUT_SECONDS)",
    )

    @model_validator(mode="after")
    def _one_start_time(self) -> ExecutionCreate:
        if self.start_at is not None and self.delay_seconds is not None:
            raise ValueError("give at most one of `start_at` and `delay_seconds`")
        if (self.start_at is not None or self.delay_seconds is not None) and not self.start:
            raise ValueError(
                "`start: false` leaves an execution PENDING until POST .../start; "
                "`start_at` and `delay_seconds` start it by themselves: give one or the other"
            )
        if self.start_at is not None:
            ahead = (self.start_at - datetime.now(UTC)).total_seconds()
            if ahead <= 0:
                raise ValueError("`start_at` must be in the future")
            if ahead > MAX_START_DELAY_SECONDS:
                raise ValueError("`start_at` must be at most a year ahead")
        return self


class ExecutionProgressUpdate(_Strict):
    """A progress report from a running execution."""

    percentage: float = Field(ge=0, le=100)
    message: str | None = Field(None, max_length=1000)
    context_update: dict[str, Any] | None = None


class AgentCreate(_Strict):
    """The body of POST /v1/agents."""

    name: str = Field(min_length=1, max_length=200)
    model: str = Field("simulated-1", min_length=1, max_length=200)
    system_prompt: str = Field("", max_length=100_000)
    parameters: dict[str, Any] = Field(default_factory=dict)
    max_concurrency: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="At most this many executions RUNNING or PAUSING at once (null: no limit).",
    )
    on_conflict: OnConflict | None = Field(
        None, description="Default collision policy of its executions' task_id (null: allow)."
    )
    daily_token_budget: int | None = Field(
        None, ge=1, le=10**15, description="Tokens all its executions may use per UTC day (null: no budget)."
    )
    tools: AgentTools = Field(
        default_factory=list,
        max_length=64,
        description="Tools its `agent` tasks may call (http tools: only hosts in TOOL_ALLOWED_HOSTS).",
    )

    @field_validator("name")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("name must not be blank")
        return v


class AgentUpdate(_Strict):
    """The body of PATCH /v1/agents/{id}: any subset of the fields."""

    name: str | None = Field(None, min_length=1, max_length=200)
    model: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, max_length=100_000)
    parameters: dict[str, Any] | None = None
    max_concurrency: int | None = Field(None, ge=1, le=100_000, description="null removes the limit.")
    on_conflict: OnConflict | None = Field(None, description="null: allow.")
    daily_token_budget: int | None = Field(None, ge=1, le=10**15, description="null removes the budget.")
    tools: AgentTools | None = Field(None, max_length=64, description="replaces the list ([] removes all).")


class ExecutionFilters(BaseModel):
    """List filters of GET /v1/executions."""

    state: list[ExecutionState] | None = None
    agent_id: uuid.UUID | None = None
    task_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    error_code: list[ErrorCode] | None = None
    metadata: dict[str, str | int | float | bool] | None = Field(
        None, description="key -> value pairs the execution's metadata must contain"
    )


MAX_BULK = 10_000


class BulkFilter(ExecutionFilters):
    """Which executions a bulk action takes: the list's filters (unknown names refused)."""

    model_config = ConfigDict(extra="forbid")


class BulkAction(_Strict):
    """The body of POST /v1/executions/bulk/cancel and /bulk/retry: `ids` or `filter`."""

    ids: list[uuid.UUID] | None = Field(None, min_length=1, max_length=MAX_BULK)
    filter: BulkFilter | None = None
    dry_run: bool = Field(False, description="say what would change; change nothing")
    limit: int = Field(1000, ge=1, le=MAX_BULK, description="at most this many executions of the filter")
    reason: str | None = Field(None, max_length=1000)

    @model_validator(mode="after")
    def _one_selector(self) -> BulkAction:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give exactly one of `ids` and `filter`")
        return self


class ScheduleCreate(_Strict):
    """The body of POST /v1/schedules: what each tick of a cron expression creates."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "agent_id": "6f1c2a52-9a1e-4d55-a7b5-0c8b3b1de4f0",
                    "cron": "30 7 * * 1-5",
                    "timezone": "Europe/Berlin",
                    "parameters": {"type": "standard", "input": "Summarize yesterday's tickets"},
                    "on_conflict": "reject",
                    "task_id": "0b7e6f7e-2f0a-4a52-9d7e-52b1b1f5a7a3",
                }
            ]
        },
    )

    agent_id: uuid.UUID
    cron: str = Field(
        min_length=1,
        max_length=200,
        description="5 fields: minute hour day-of-month month day-of-week (e.g. `30 7 * * 1-5`)",
    )
    timezone: str = Field("UTC", min_length=1, max_length=64, description="IANA name, e.g. Europe/Berlin")
    parameters: ExecutionParameters
    task_id: uuid.UUID | None = Field(None, description="each tick's execution gets this task_id")
    on_conflict: OnConflict | None = Field(
        None, description="with task_id: what a tick does while the task's previous run is active"
    )
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        cron.zone(v)
        return v

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        cron.validate(v, "UTC")  # whether it is valid and fires does not depend on the zone
        return v


class ScheduleUpdate(_Strict):
    """The body of PATCH /v1/schedules/{id}: any subset of the fields (task_id and on_conflict
    may be null)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"enabled": False}, {"cron": "0 6 * * *"}]}
    )

    agent_id: uuid.UUID | None = None
    cron: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, min_length=1, max_length=64)
    parameters: ExecutionParameters | None = None
    task_id: uuid.UUID | None = None
    on_conflict: OnConflict | None = None
    enabled: bool | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None:
            cron.zone(v)
        return v

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is not None:
            cron.validate(v, "UTC")
        return v


MAX_PAGE = 1_000_000
MAX_PAGE_SIZE = 200


class Pagination(BaseModel):
    """A page of a newest-first list."""

    page: int = Field(1, ge=1, le=MAX_PAGE)
    page_size: int = Field(50, ge=1, le=MAX_PAGE_SIZE)
