"""Every API request as a `Call`, and the paging of lists: written once for both clients.

Reads are reconnectable; a create carries an idempotency key (one is made up when the
caller gives none), so it is reconnectable too; updates, deletes and control actions
are not (a dropped connection may have hidden a change that happened).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Generic, TypeVar

import httpx

from agentexec_client._core import Call, path_id
from agentexec_client.events import AnyEvent, parse_event
from agentexec_client.models import (
    Agent,
    AgentCreate,
    AgentPage,
    AgentUpdate,
    BulkResult,
    ErrorCode,
    Execution,
    ExecutionCreate,
    ExecutionPage,
    ExecutionParameters,
    ExecutionState,
    History,
    HistoryItem,
    Schedule,
    ScheduleCreate,
    SchedulePage,
    ScheduleUpdate,
    UsageGroup,
    UsageItem,
    UsageReport,
)

AGENTS = "/v1/agents"
EXECUTIONS = "/v1/executions"
USAGE = "/v1/usage"
SCHEDULES = "/v1/schedules"
CONTROL_ACTIONS = ("start", "cancel", "pause", "resume", "retry")


class NotGiven:
    """The default of an argument whose None means something (an agent's limit: remove it)."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v is not NOT_GIVEN}


def _set(**values: Any) -> dict[str, Any]:
    """The values given, None included (sent as null)."""
    return {k: v for k, v in values.items() if v is not NOT_GIVEN}


def _agent(response: httpx.Response) -> Agent:
    return Agent.model_validate(response.json())


def _execution(response: httpx.Response) -> Execution:
    return Execution.model_validate(response.json())


def _nothing(response: httpx.Response) -> None:
    return None


# ------------------------------------------------------------------ agents


def agent_create(name: str, **fields: Any) -> Call[Agent]:
    """POST /v1/agents."""
    body = AgentCreate(name=name, **_given(**fields)).body()
    return Call("POST", AGENTS, _agent, json=body)


def agent_get(agent_id: uuid.UUID) -> Call[Agent]:
    """GET /v1/agents/{id}."""
    return Call("GET", f"{AGENTS}/{agent_id}", _agent, reconnectable=True)


def agent_page(page: int, page_size: int) -> Call[AgentPage]:
    """GET /v1/agents: one page, by name."""
    params = {"page": page, "page_size": page_size}
    return Call("GET", AGENTS, lambda r: AgentPage.model_validate(r.json()), params, reconnectable=True)


def agent_update(agent_id: uuid.UUID, fields: Mapping[str, Any], limits: Mapping[str, Any]) -> Call[Agent]:
    """PATCH /v1/agents/{id} with the `fields` that are not None and the `limits` given (None: remove)."""
    body = AgentUpdate(**_given(**fields), **_set(**limits)).body()
    return Call("PATCH", f"{AGENTS}/{agent_id}", _agent, json=body)


def agent_delete(agent_id: uuid.UUID) -> Call[None]:
    """DELETE /v1/agents/{id}."""
    return Call("DELETE", f"{AGENTS}/{agent_id}", _nothing)


# -------------------------------------------------------------- executions


def parameters_of(
    parameters: ExecutionParameters | Mapping[str, Any] | None, input: str | None
) -> dict[str, Any]:
    """The `parameters` object from either `parameters` or the `input` shorthand."""
    if (parameters is None) == (input is None):
        raise TypeError("give either parameters or input=")
    if input is not None:
        return {"input": input}
    if isinstance(parameters, ExecutionParameters):
        return parameters.body()
    return dict(parameters or {})


def execution_create(
    agent_id: uuid.UUID, parameters: dict[str, Any], idempotency_key: str | None, **options: Any
) -> Call[Execution]:
    """POST /v1/executions with an Idempotency-Key (a new one when none is given), so it may be retried."""
    generated = idempotency_key is None
    key = f"agentexec-client-{uuid.uuid4()}" if idempotency_key is None else idempotency_key
    body = ExecutionCreate(agent_id=agent_id, parameters=parameters, **_given(**options)).body()

    def parse(response: httpx.Response) -> Execution:
        execution = _execution(response)
        # 200 answers an existing execution with this key: with a key made up here, it is
        # the one an earlier attempt of this same call created before its answer was lost.
        execution._created = response.status_code == 201 or generated
        return execution

    return Call("POST", EXECUTIONS, parse, json=body, headers={"Idempotency-Key": key}, reconnectable=True)


def execution_get(execution_id: Any) -> Call[Execution]:
    """GET /v1/executions/{id}."""
    return Call("GET", f"{EXECUTIONS}/{path_id(execution_id)}", _execution, reconnectable=True)


def execution_delete(execution_id: Any) -> Call[None]:
    """DELETE /v1/executions/{id}."""
    return Call("DELETE", f"{EXECUTIONS}/{path_id(execution_id)}", _nothing)


def control(action: str, execution_id: Any, reason: str | None) -> Call[Execution]:
    """POST /v1/executions/{id}/{action}, with the reason kept in the history."""
    path = f"{EXECUTIONS}/{path_id(execution_id)}/{action}"
    return Call("POST", path, _execution, json={"reason": reason} if reason is not None else None)


def bulk(action: str, body: dict[str, Any]) -> Call[BulkResult]:
    """POST /v1/executions/bulk/{cancel|retry}: `ids` or `filter`, `dry_run`, `limit`, `reason`."""
    return Call(
        "POST", f"{EXECUTIONS}/bulk/{action}", lambda r: BulkResult.model_validate(r.json()), json=body
    )


def bulk_body(
    ids: Iterable[Any] | None,
    filters: Mapping[str, Any] | None,
    dry_run: bool,
    limit: int,
    reason: str | None,
) -> dict[str, Any]:
    """The body of a bulk action (exactly one of `ids` and `filters`: the server says 422 otherwise)."""
    body: dict[str, Any] = {"dry_run": dry_run, "limit": limit}
    if ids is not None:
        body["ids"] = [path_id(i) for i in ids]
    if filters is not None:
        body["filter"] = {k: _jsonable(v) for k, v in filters.items() if v is not None}
    if reason is not None:
        body["reason"] = reason
    return body


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return getattr(value, "value", value)


def history(execution_id: Any, limit: int) -> Call[list[HistoryItem]]:
    """GET /v1/executions/{id}/history: the last `limit` transitions, oldest first."""
    path = f"{EXECUTIONS}/{path_id(execution_id)}/history"
    return Call(
        "GET", path, lambda r: History.model_validate(r.json()).items, {"limit": limit}, reconnectable=True
    )


def events_page(
    execution_id: Any, after: int | str, limit: int, types: Iterable[str] | None = None
) -> Call[list[AnyEvent]]:
    """GET /v1/executions/{id}/events as JSON: up to `limit` events after `after` (an event id,
    `E` or `E.k`); `types` None: the logged types (output deltas only when named)."""
    path = f"{EXECUTIONS}/{path_id(execution_id)}/events"
    params = {"after": str(after), "limit": limit, "types": ",".join(str(t) for t in types or ())}
    return Call(
        "GET", path, lambda r: [parse_event(e) for e in r.json()["items"]], params, reconnectable=True
    )


StateFilter = ExecutionState | str | Iterable[ExecutionState | str] | None


def states_of(state: StateFilter) -> list[str]:
    """The `state` filter as a list of names."""
    if state is None:
        return []
    if isinstance(state, str):
        return [ExecutionState(state.upper()).value]
    return [ExecutionState(str(s).upper()).value for s in state]


ErrorCodeFilter = ErrorCode | str | Iterable[ErrorCode | str] | None


def error_codes_of(error_code: ErrorCodeFilter) -> list[str]:
    """The `error_code` filter as a list of codes (sent as given: the server knows its own codes)."""
    if error_code is None:
        return []
    if isinstance(error_code, str):
        return [str(error_code)]
    return [str(c) for c in error_code]


def filters_of(
    state: StateFilter,
    agent_id: uuid.UUID | None,
    task_id: Any,
    created_after: datetime | None,
    created_before: datetime | None,
    error_code: ErrorCodeFilter = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The query filters of a listing (`metadata` pairs as `metadata.KEY=VALUE`, all must match)."""
    return {
        "state": states_of(state),
        "agent_id": None if agent_id is None else str(agent_id),
        "task_id": None if task_id is None else str(task_id),
        "created_after": created_after,
        "created_before": created_before,
        "error_code": error_codes_of(error_code),
    } | {f"metadata.{k}": _metadata_value(v) for k, v in (metadata or {}).items()}


def _metadata_value(value: Any) -> str:
    """A metadata filter's value as the query sends it (a boolean as JSON spells it)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def execution_page(page: int, page_size: int, filters: Mapping[str, Any]) -> Call[ExecutionPage]:
    """GET /v1/executions: one page, newest first."""
    params: dict[str, Any] = {"page": page, "page_size": page_size}
    for name, value in filters.items():
        params[name] = value.isoformat() if isinstance(value, datetime) else value
    return Call(
        "GET", EXECUTIONS, lambda r: ExecutionPage.model_validate(r.json()), params, reconnectable=True
    )


# ------------------------------------------------------------------- usage


def _day_bound(value: date | datetime | None) -> str | None:
    """A usage bound: a date is that UTC day (sent as its UTC midnight, never a local one)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(), tzinfo=timezone.utc)  # noqa: UP017 (runs on 3.10)
    return value.isoformat()


def usage(
    group_by: UsageGroup,
    agent_id: uuid.UUID | None,
    created_after: date | datetime | None,
    created_before: date | datetime | None,
) -> Call[list[UsageItem]]:
    """GET /v1/usage: tokens by agent, UTC day, or both; the days between the bounds, inclusive."""
    params = {
        "group_by": group_by,
        "agent_id": None if agent_id is None else str(agent_id),
        "created_after": _day_bound(created_after),
        "created_before": _day_bound(created_before),
    }
    return Call(
        "GET", USAGE, lambda r: UsageReport.model_validate(r.json()).items, params, reconnectable=True
    )


class ExecutionPager:
    """Walks every page of a listing; each execution once.

    After the first page the listing is pinned to executions created no later than its
    newest one (unless `created_before` was given), so executions created meanwhile do
    not shift the later pages.
    """

    def __init__(self, filters: dict[str, Any], page_size: int):
        self.filters, self.page_size, self.page = dict(filters), page_size, 1
        self.seen: set[uuid.UUID] = set()
        self.done = False

    def call(self) -> Call[ExecutionPage]:
        """The request of the next page."""
        return execution_page(self.page, self.page_size, self.filters)

    def take(self, answer: ExecutionPage) -> list[Execution]:
        """The executions of a page not yielded before; marks the end."""
        if self.page == 1 and answer.items and self.filters.get("created_before") is None:
            self.filters["created_before"] = answer.items[0].created_at + timedelta(microseconds=1)
        self.page += 1
        self.done = len(answer.items) < self.page_size
        fresh = [e for e in answer.items if e.id not in self.seen]
        self.seen.update(e.id for e in fresh)
        return fresh


T = TypeVar("T")


class Pager(Generic[T]):
    """Walks every page of a listing (agents, schedules, webhooks, deliveries); each item once."""

    def __init__(self, page_call: Callable[[int, int], Call[Any]], page_size: int):
        self.page_call, self.page_size, self.page = page_call, page_size, 1
        self.seen: set[uuid.UUID] = set()
        self.done = False

    def call(self) -> Call[Any]:
        """The request of the next page."""
        return self.page_call(self.page, self.page_size)

    def take(self, answer: Any) -> list[T]:
        """The items of a page not yielded before; marks the end."""
        self.page += 1
        self.done = len(answer.items) < self.page_size
        fresh = [item for item in answer.items if item.id not in self.seen]
        self.seen.update(item.id for item in fresh)
        return fresh


# --------------------------------------------------------------- schedules


def _schedule(response: httpx.Response) -> Schedule:
    return Schedule.model_validate(response.json())


def schedule_create(
    agent_id: uuid.UUID, cron: str, parameters: dict[str, Any], **fields: Any
) -> Call[Schedule]:
    """POST /v1/schedules (not retried: a lost answer may hide a created schedule)."""
    body = ScheduleCreate(agent_id=agent_id, cron=cron, parameters=parameters, **_given(**fields)).body()
    return Call("POST", SCHEDULES, _schedule, json=body)


def schedule_get(schedule_id: Any) -> Call[Schedule]:
    """GET /v1/schedules/{id}."""
    return Call("GET", f"{SCHEDULES}/{path_id(schedule_id)}", _schedule, reconnectable=True)


def schedule_page(page: int, page_size: int) -> Call[SchedulePage]:
    """GET /v1/schedules: one page, oldest first."""
    params = {"page": page, "page_size": page_size}
    return Call("GET", SCHEDULES, lambda r: SchedulePage.model_validate(r.json()), params, reconnectable=True)


def schedule_update(
    schedule_id: Any, fields: Mapping[str, Any], clearable: Mapping[str, Any]
) -> Call[Schedule]:
    """PATCH /v1/schedules/{id}: the `fields` not None, and the `clearable` given (None clears)."""
    body = ScheduleUpdate(**_given(**fields), **_set(**clearable)).body()
    return Call("PATCH", f"{SCHEDULES}/{path_id(schedule_id)}", _schedule, json=body)


def schedule_delete(schedule_id: Any) -> Call[None]:
    """DELETE /v1/schedules/{id}."""
    return Call("DELETE", f"{SCHEDULES}/{path_id(schedule_id)}", _nothing)
