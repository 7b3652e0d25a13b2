"""The pydantic models of the HTTP API: path, query and header parameters, bodies and answers.

Request bodies reuse the domain models of `app.schemas`; everything here only shapes
what crosses HTTP, and feeds the generated OpenAPI document.
"""

from __future__ import annotations

import copy
import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from app.models import Agent, Execution, ExecutionEvent, ExecutionStateHistory, Schedule
from app.schemas import (
    MAX_PAGE,
    MAX_PAGE_SIZE,
    AgentCreate,
    AgentTool,
    AgentUpdate,
    BulkAction,
    ErrorCode,
    ExecutionCreate,
    ExecutionState,
    OnConflict,
    RequiredAction,
    ScheduleCreate,
    ScheduleUpdate,
    WaitingReason,
)

_NUMBER = re.compile(r"\s*[-+]?[0-9.eE+-]+\s*")
_METADATA_KEY = re.compile(r"[^\s\x00-\x1f\x7f]{1,100}")
MAX_METADATA_FILTERS = 20
TASK_ID = (
    "The caller's own id for the task this execution works on (a UUID it chooses), sent in every "
    "event and a filter of the list. Several executions may share it (retries, follow-ups); "
    "`on_conflict` at creation says what happens while one of them is still active."
)
# The domain's own bound; MAX_TIMEOUT_SECONDS (a setting) may only lower it (api.openapi, the view).
SCHEMA_MAX_TIMEOUT: int = next(
    m.le for m in ExecutionCreate.model_fields["timeout_seconds"].metadata if getattr(m, "le", None)
)
CELERY_TASK_ID = (
    "The Celery task id of the current attempt, `<execution id>-<attempt>` (as shown by Flower "
    "and `celery inspect`); null until the execution is first queued."
)


def _iso_only(value: Any) -> Any:
    """A query timestamp is an ISO 8601 string, not a number of seconds."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO 8601 date-time, such as 2025-01-31T12:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


class _SchemaOnce(BaseModel):
    """A parameter model whose JSON schema is generated once.

    flask-openapi3 reads a header or query model's JSON schema on every request it
    validates; generating it each time cost more CPU than the rest of the validation.
    """

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        key = (cls, args, tuple(sorted(kwargs.items())))
        schema = _SCHEMAS.get(key)
        if schema is None:
            schema = _SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(schema)  # callers may change what they get


_SCHEMAS: dict[Any, dict[str, Any]] = {}


class _Params(_SchemaOnce):
    """Query parameters: unknown names are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ parameters


class AgentPath(BaseModel):
    """The agent named in the path."""

    agent_id: uuid.UUID


class ExecutionPath(BaseModel):
    """The execution named in the path."""

    execution_id: uuid.UUID


class PageQuery(_Params):
    """A page of a list."""

    page: int = Field(1, ge=1, le=MAX_PAGE)
    page_size: int = Field(50, ge=1, le=MAX_PAGE_SIZE)


class ExecutionListQuery(PageQuery):
    """Filters of GET /v1/executions (`state` may repeat); newest first."""

    state: list[ExecutionState] | None = None
    agent_id: uuid.UUID | None = None
    task_id: uuid.UUID | None = Field(None, description="only the executions of this caller's task id")
    created_after: IsoDateTime | None = None
    created_before: IsoDateTime | None = None
    error_code: list[ErrorCode] | None = Field(None, description="only executions that ended with this code")
    metadata: dict[str, str] | None = Field(
        None,
        description="Sent as `metadata.KEY=VALUE`, one parameter per key (all must match): the "
        "execution's metadata has KEY with this value (a string, or the number or boolean it spells).",
    )

    @model_validator(mode="before")
    @classmethod
    def _metadata_pairs(cls, data: Any) -> Any:
        """Gather `metadata.KEY=VALUE` parameters into `metadata`; a bad key is a 422."""
        if not isinstance(data, dict):
            return data
        if "metadata" in data:
            raise ValueError("filter on metadata with metadata.KEY=VALUE, one parameter per key")
        pairs = {k[len("metadata.") :]: v for k, v in data.items() if k.startswith("metadata.")}
        if not pairs:
            return data
        rest = {k: v for k, v in data.items() if not k.startswith("metadata.")}
        if len(pairs) > MAX_METADATA_FILTERS:
            raise ValueError(f"at most {MAX_METADATA_FILTERS} metadata.KEY filters")
        for key, value in pairs.items():
            if not _METADATA_KEY.fullmatch(key):
                raise ValueError(
                    f"metadata.{key}: a metadata key is 1 to 100 characters, none of them a space or control"
                )
            if not isinstance(value, str) or len(value) > 1000:
                raise ValueError(f"metadata.{key}: the value is a string of at most 1,000 characters")
        return rest | {"metadata": pairs}


class UsageQuery(_Params):
    """GET /v1/usage: token usage of the tenant's agents by agent or by UTC day."""

    group_by: Literal["agent", "day", "agent_day"] = Field(
        "agent", description="one item per agent, per UTC day, or per agent and day"
    )
    agent_id: uuid.UUID | None = None
    created_after: IsoDateTime | None = Field(None, description="from this UTC day on (inclusive)")
    created_before: IsoDateTime | None = Field(None, description="up to this UTC day (inclusive)")


class HistoryQuery(_Params):
    """How many of the last transitions to return."""

    limit: int = Field(100, ge=1, le=1000)


EVENT_ID_PATTERN = r"^[0-9]{1,19}(\.[0-9]{1,19})?$"
EVENT_ID = (
    "An event id: `E` for a logged event (state change, progress, completion), `E.k` for an "
    "output delta (the k-th placed after logged event E). Ids of one execution only grow."
)


def _split_types(value: Any) -> Any:
    """`types` may repeat and each may list several, comma-separated."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    return [t.strip() for v in values for t in str(v).split(",") if t.strip()] or None  # empty: all


def _known_types(value: list[str] | None) -> list[str] | None:
    from api.replay import known_types

    if value is not None:
        for name in value:
            if name not in known_types():
                raise ValueError(f"unknown event type {name!r}; known: {', '.join(known_types())}")
    return value


class EventsQuery(_Params):
    """Events after an event id (exclusive); `limit` applies to the JSON answer."""

    after: str = Field("0", pattern=EVENT_ID_PATTERN, description=EVENT_ID + " For example `42` or `42.3`.")
    limit: int = Field(100, ge=1, le=1000)
    types: Annotated[list[str] | None, BeforeValidator(_split_types), AfterValidator(_known_types)] = Field(
        None,
        max_length=20,
        description="Only these event types (repeat the parameter or separate with commas). "
        "Without it the stream sends every type, output deltas included, and the JSON answer "
        "every logged type: deltas only when `agent.execution.output.delta` is asked for. "
        "For example `types=agent.execution.state_changed,agent.execution.completed`.",
    )


class IdempotencyHeader(_SchemaOnce):
    """A client-chosen key: the same key with the same body returns the first execution."""

    idempotency_key: str | None = Field(
        None, alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"
    )


class LastEventIdHeader(_SchemaOnce):
    """The id of the last event an SSE client received (sent again on reconnect)."""

    last_event_id: str | None = Field(
        None, alias="Last-Event-ID", pattern=EVENT_ID_PATTERN, description=EVENT_ID
    )


# ---------------------------------------------------------------------- bodies


class AgentCreateBody(AgentCreate):
    """The body of POST /v1/agents."""


class AgentUpdateBody(AgentUpdate):
    """The body of PATCH /v1/agents/{agent_id}: any subset of the fields."""


class BulkActionBody(BulkAction):
    """The body of POST /v1/executions/bulk/cancel and /bulk/retry."""


class ExecutionCreateBody(ExecutionCreate):
    """The body of POST /v1/executions."""

    timeout_seconds: int | None = Field(
        None,
        gt=0,
        le=SCHEMA_MAX_TIMEOUT,
        description="the deadline of each attempt, in seconds (default DEFAULT_TIMEOUT_SECONDS); "
        "at most MAX_TIMEOUT_SECONDS, else 422",
    )


class ControlBody(BaseModel):
    """The optional body of the control routes (start, cancel, pause, resume, retry)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=1000)


# --------------------------------------------------------------------- answers


class AgentOut(BaseModel):
    """An agent."""

    id: uuid.UUID
    name: str
    model: str
    system_prompt: str
    parameters: dict[str, Any]
    max_concurrency: int | None = Field(description="at most this many RUNNING or PAUSING (null: no limit)")
    on_conflict: OnConflict | None = Field(description="default collision policy of task_id (null: allow)")
    daily_token_budget: int | None = Field(description="tokens per UTC day for all its executions")
    tools: list[AgentTool] = Field(default_factory=list, description="tools its `agent` tasks may call")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Agent) -> AgentOut:
        """The answer for an agent row."""
        return cls(
            id=row.id,
            name=row.name,
            model=row.model,
            system_prompt=row.system_prompt or "",
            parameters=row.parameters or {},
            max_concurrency=row.max_concurrency,
            on_conflict=None if row.on_conflict is None else OnConflict(row.on_conflict),
            daily_token_budget=row.daily_token_budget,
            tools=[AgentTool.model_validate(t) for t in row.tools or []],
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class AgentPage(BaseModel):
    """A page of agents, by name."""

    items: list[AgentOut]
    total: int
    page: int
    page_size: int


class Progress(BaseModel):
    """How far the current attempt is."""

    percentage: float
    message: str | None


class Usage(BaseModel):
    """Tokens an execution used so far, every model call and attempt together."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ExecutionOut(BaseModel):
    """An execution."""

    id: uuid.UUID
    agent_id: uuid.UUID
    task_id: uuid.UUID | None = Field(description=TASK_ID)
    parameters: dict[str, Any]
    state: ExecutionState
    progress: Progress
    context: dict[str, Any]
    result: dict[str, Any] | None
    error_message: str | None
    error_code: ErrorCode | None = Field(
        description="why it ended FAILED, TIMED_OUT or CANCELLED (null otherwise)"
    )
    waiting_reason: WaitingReason | None = Field(
        description="why a QUEUED execution does not run yet (null: it only waits for a worker)"
    )
    max_tokens: int | None
    usage: Usage
    attempt: int
    celery_task_id: str | None = Field(description=CELERY_TASK_ID)
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
    scheduled_at: datetime | None = Field(
        None, description="a delayed start (start_at, delay_seconds, a schedule's tick): queued then"
    )
    required_action: RequiredAction | None = Field(
        None, description="REQUIRES_ACTION: the tool calls it waits for (null when nothing waits)"
    )

    @classmethod
    def of(cls, row: Execution) -> ExecutionOut:
        """The answer for an execution row."""
        return cls(
            id=row.id,
            agent_id=row.agent_id,
            task_id=row.task_id,
            parameters=row.parameters or {},
            state=ExecutionState(row.state),
            progress=Progress(percentage=float(row.progress_percentage or 0), message=row.progress_message),
            context=row.context or {},
            result=row.result,
            error_message=row.error_message,
            error_code=None if row.error_code is None else ErrorCode(row.error_code),
            waiting_reason=None if row.waiting_reason is None else WaitingReason(row.waiting_reason),
            max_tokens=row.max_tokens,
            usage=Usage(
                prompt_tokens=row.prompt_tokens or 0,
                completion_tokens=row.completion_tokens or 0,
                total_tokens=row.total_tokens or 0,
            ),
            attempt=row.attempt,
            celery_task_id=row.celery_task_id,
            max_retries=row.max_retries,
            timeout_seconds=row.timeout_seconds,
            queue=row.queue,
            priority=row.priority,
            metadata=row.metadata_ or {},
            created_at=row.created_at,
            updated_at=row.updated_at,
            queued_at=row.queued_at,
            started_at=row.started_at,
            completed_at=row.completed_at,
            scheduled_at=row.scheduled_at,
            required_action=None if row.required_action is None else RequiredAction(**row.required_action),
        )


class ExecutionPage(BaseModel):
    """A page of executions, newest first."""

    items: list[ExecutionOut]
    total: int = Field(
        description="matching executions: exact when `total_exact`, else PostgreSQL's "
        "estimate (over 10,000 matches, or a count that would be slow)"
    )
    total_exact: bool = True
    page: int
    page_size: int


class HistoryItem(BaseModel):
    """One accepted state transition (no from_state for the creation)."""

    from_state: ExecutionState | None
    to_state: ExecutionState
    reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: ExecutionStateHistory) -> HistoryItem:
        """The answer for a history row."""
        return cls(
            from_state=row.from_state, to_state=row.to_state, reason=row.reason, created_at=row.created_at
        )


class HistoryOut(BaseModel):
    """The last transitions of an execution, oldest first."""

    items: list[HistoryItem]


class EventOut(BaseModel):
    """One event, as published on Redis and sent over SSE: a logged event (an integer id) or
    an output delta (`E.k`, a string)."""

    id: int | str = Field(description=EVENT_ID)
    type: str
    execution_id: uuid.UUID
    created_at: datetime | None
    payload: dict[str, Any]

    @classmethod
    def of(cls, row: ExecutionEvent) -> EventOut:
        """The answer for an event row."""
        return cls(
            id=row.id,
            type=row.type,
            execution_id=row.execution_id,
            created_at=row.created_at,
            payload=row.payload or {},
        )


class EventsOut(BaseModel):
    """Events after `after`, in order; with Accept: text/event-stream the route streams instead."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        openapi_extra={
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "SSE: `id:` event id, `event:` type, `data:` an EventOut as JSON",
                    }
                }
            }
        }
    )

    items: list[EventOut]


class Status(BaseModel):
    """A health answer: `ready`, `ok`, or `degraded` with the reasons."""

    status: str
    reasons: list[str] | None = None


class FieldError(BaseModel):
    """One invalid field of a request."""

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem: every error answer of this API."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class UsageItem(BaseModel):
    """Usage of one agent, one UTC day, or one agent on one day (by `group_by`).

    `executions` counts the executions that ended on the day(s); tokens are counted when a
    step or a run records them."""

    agent_id: uuid.UUID | None
    day: date | None
    executions: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageOut(BaseModel):
    """GET /v1/usage."""

    items: list[UsageItem]


class BulkSkip(BaseModel):
    """An execution a bulk action left alone, and why."""

    id: uuid.UUID
    state: ExecutionState | None = Field(description="null when no such execution (for this tenant)")
    reason: str


class BulkResult(BaseModel):
    """What a bulk action matched, changed (or, with dry_run, would change) and left alone."""

    matched: int
    changed: int
    skipped: list[BulkSkip]


# ------------------------------------------------------------------ schedules


class SchedulePath(BaseModel):
    """The schedule named in the path."""

    schedule_id: uuid.UUID


class ScheduleCreateBody(ScheduleCreate):
    """The body of POST /v1/schedules."""


class ScheduleUpdateBody(ScheduleUpdate):
    """The body of PATCH /v1/schedules/{schedule_id}: any subset of the fields."""


class ScheduleOut(BaseModel):
    """A cron schedule: each tick creates one execution of its agent with its parameters."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3d0c1f5e-8f5a-4a8e-9d0b-1c2d3e4f5a6b",
                    "agent_id": "6f1c2a52-9a1e-4d55-a7b5-0c8b3b1de4f0",
                    "cron": "30 7 * * 1-5",
                    "timezone": "Europe/Berlin",
                    "parameters": {"type": "standard", "input": "Summarize yesterday's tickets"},
                    "task_id": None,
                    "on_conflict": None,
                    "enabled": True,
                    "next_run_at": "2026-11-27T06:30:00Z",
                    "last_run_at": "2026-11-26T06:30:00Z",
                    "last_execution_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    "last_error": None,
                    "created_at": "2026-11-20T10:00:00Z",
                    "updated_at": "2026-11-26T06:30:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    agent_id: uuid.UUID
    cron: str
    timezone: str
    parameters: dict[str, Any]
    task_id: uuid.UUID | None
    on_conflict: OnConflict | None
    enabled: bool
    next_run_at: datetime | None = Field(description="the next tick, UTC (null while disabled)")
    last_run_at: datetime | None = Field(description="the last tick that ran, UTC")
    last_execution_id: uuid.UUID | None = Field(description="the execution of the last tick that made one")
    last_error: str | None = Field(description="why the last tick created no execution (null: it did)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Schedule) -> ScheduleOut:
        """The answer for a schedule row."""
        return cls(
            id=row.id,
            agent_id=row.agent_id,
            cron=row.cron,
            timezone=row.timezone,
            parameters=row.parameters or {},
            task_id=row.task_id,
            on_conflict=None if row.on_conflict is None else OnConflict(row.on_conflict),
            enabled=row.enabled,
            next_run_at=row.next_run_at,
            last_run_at=row.last_run_at,
            last_execution_id=row.last_execution_id,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class SchedulePage(BaseModel):
    """A page of schedules, oldest first."""

    items: list[ScheduleOut]
    total: int
    page: int
    page_size: int
