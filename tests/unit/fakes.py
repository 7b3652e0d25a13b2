"""In-memory stand-ins for the unit tier: the execution repository, the event bus, the task dispatcher.

`FakeRepository` implements what ExecutionStateManager, ExecutionProgressTracker and
ExecutionTaskRunner call on the real one, with the SQL's meaning: the same guards (expected
state or sources, attempt, tenant; progress only while RUNNING and never lower), every
`writer.Expr` evaluated against the row as it was before the write (as an UPDATE's SET
does), history and event rows with increasing ids whose payloads come from
`event_emitter.render_payload` (the definition the SQL is built from), JSON values
round-tripped as JSONB would, and detached copies handed back.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace
from typing import Any

from app.errors import DatabaseError
from app.execution.dispatch import celery_task_id
from app.execution.event_emitter import EventSpec, render_payload
from app.execution.writer import (
    ATTRIBUTE_OF,
    COLUMN_OF,
    USAGE_VALUES,
    Expr,
    History,
    Written,
    execution_from_row,
    usage_params,
)
from app.models import DEFAULT_TENANT, Agent, Execution, ExecutionEvent, ExecutionStateHistory
from app.schemas import FINISHED_STATES, HELD_BY_WORKER, SLOT_STATES, ExecutionState
from tests.conftest import RecordingDispatcher

__all__ = ["EXPRESSIONS", "SERVER_DEFAULTS", "FakeEventBus", "FakeRepository", "RecordingDispatcher"]

Row = dict[str, Any]  # executions column -> value
_JSON_COLUMNS = frozenset({"parameters", "context", "result", "metadata", "required_action"})
_NOT_NULL_WITHOUT_DEFAULT = ("id", "agent_id", "parameters", "state")
SERVER_DEFAULTS: Row = {
    "tenant": DEFAULT_TENANT,
    "progress_percentage": 0.0,
    "context": {},
    "attempt": 0,
    "max_retries": 3,
    "timeout_seconds": 3600,
    "queue": "executions",
    "priority": 5,
    "metadata": {},
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 0,
}
_HELD = sorted(s.value for s in HELD_BY_WORKER)


def _jsonb(value: Any) -> Any:
    """What PostgreSQL hands back for a JSONB value (and a failure where Jsonb() would fail)."""
    return None if value is None else json.loads(json.dumps(value))


def _before(old: Row | None) -> Row:
    if old is None:
        raise ValueError("an inserted row has no earlier values to read")
    return old


def _first_progress(old: Row | None, now: datetime, params: Mapping[str, Any]) -> float:
    steps = (_before(old)["parameters"] or {}).get("steps")
    share = Decimal("100.0") / (Decimal(1 if steps is None else len(steps)) + 2)
    first = float(share.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))  # numeric round(): half up
    return max(float(_before(old)["progress_percentage"]), first)  # greatest(): never back


Evaluate = Callable[[Row | None, datetime, Mapping[str, Any]], Any]
# Each named SQL expression in Python: (the row before the write or None for an insert, now(), parameters).
EXPRESSIONS: dict[str, Evaluate] = {
    Expr.NOW: lambda old, now, p: now,
    Expr.NEXT_ATTEMPT: lambda old, now, p: _before(old)["attempt"] + 1,
    Expr.NEXT_TASK_ID: lambda old, now, p: celery_task_id(_before(old)["id"], _before(old)["attempt"] + 1),
    Expr.NOW_PLUS_DELAY: lambda old, now, p: now + timedelta(seconds=float(p["delay_seconds"])),
    Expr.FIRST_STARTED_AT: lambda old, now, p: _before(old)["started_at"] or now,
    Expr.DEADLINE: lambda old, now, p: now + timedelta(seconds=_before(old)["timeout_seconds"]),
    Expr.MERGE_CONTEXT: lambda old, now, p: _before(old)["context"] | _jsonb(p["context_update"]),
    Expr.FIRST_PROGRESS: _first_progress,
    Expr.CANCEL_CODE: lambda old, now, p: _before(old).get("error_code") or "cancelled",
    Expr.ADD_PROMPT_TOKENS: lambda old, now, p: _before(old)["prompt_tokens"] + int(p["usage_prompt"]),
    Expr.ADD_COMPLETION_TOKENS: lambda old, now, p: (
        _before(old)["completion_tokens"] + int(p["usage_completion"])
    ),
    Expr.ADD_TOTAL_TOKENS: lambda old, now, p: _before(old)["total_tokens"] + int(p["usage_total"]),
}


def _columns(values: Mapping[str, Any]) -> Row:
    """Attribute or column names -> column names; ValueError for a column executions lacks."""
    columns: Row = {}
    for key, value in values.items():
        column = COLUMN_OF.get(key, key)
        if column not in ATTRIBUTE_OF:
            raise ValueError(f"executions has no column {column!r}")
        columns[column] = value
    return columns


def _evaluate(column: str, value: Any, old: Row | None, now: datetime, params: Mapping[str, Any]) -> Any:
    if isinstance(value, Expr):
        if value not in EXPRESSIONS:
            raise NotImplementedError(f"the fake repository has no Python form of {value!r}")
        value = EXPRESSIONS[value](old, now, params)
    if column in _JSON_COLUMNS:
        return _jsonb(value)
    return float(value) if column == "progress_percentage" else value


def _holds(row: Row, guards: Mapping[str, Any]) -> bool:
    return all(
        row[col] <= value if col == "progress_percentage" else row[col] == value
        for col, value in guards.items()
    )


def _guards(expected_state: ExecutionState | None, attempt: int | None, tenant: str | None) -> Row:
    guards: Row = {} if expected_state is None else {"state": ExecutionState(expected_state).value}
    if attempt is not None:
        guards["attempt"] = attempt
    if tenant is not None:
        guards["tenant"] = tenant
    return guards


class FakeRepository:
    """Executions, agents, history and events in dicts and lists; the writer's semantics in Python."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, Row] = {}
        self.agents: dict[uuid.UUID, Agent] = {}
        self.history: list[ExecutionStateHistory] = []
        self.events: list[ExecutionEvent] = []
        self.tenant_limits = {}
        self.usage_today: dict[uuid.UUID, dict[str, int]] = {}  # agent -> today's usage

    # ------------------------------------------------------------ helpers for tests

    def add_agent(self, *, tenant: str = DEFAULT_TENANT, **fields: Any) -> Agent:
        """An agent row (model simulated-1, no system prompt, no parameters unless given)."""
        defaults = {"id": uuid.uuid4(), "name": "agent", "model": "simulated-1", "system_prompt": ""}
        agent = Agent(**({**defaults, "tenant": tenant, "parameters": {}} | fields))
        self.agents[agent.id] = agent
        return agent

    def history_of(self, execution_id: uuid.UUID) -> list[tuple[str | None, str, str | None]]:
        """(from_state, to_state, reason) of an execution, oldest first."""
        return [(h.from_state, h.to_state, h.reason) for h in self.history if h.execution_id == execution_id]

    def events_of(self, execution_id: uuid.UUID) -> list[ExecutionEvent]:
        """The logged events of an execution, in id order."""
        return [e for e in self.events if e.execution_id == execution_id]

    # ---------------------------------------------------- what the core calls

    def get_by_id(self, execution_id: uuid.UUID, *, tenant: str | None = None) -> Execution | None:
        row = self.rows.get(execution_id)
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return execution_from_row(copy.deepcopy(row))

    def tokens_today(self, agent_id: uuid.UUID) -> int:
        """The agent's tokens of the day."""
        return self.usage_today.get(agent_id, {}).get("total_tokens", 0)

    def get_agent(self, agent_id: uuid.UUID, *, tenant: str | None = None) -> Agent | None:
        agent = self.agents.get(agent_id)
        return None if agent is None or (tenant is not None and agent.tenant != tenant) else agent

    def create_execution(
        self,
        values: dict[str, Any],
        *,
        history: list[History],
        events: list[EventSpec],
        agent_tenant: str | None,
        skip_if_key_exists: bool = False,
        params: dict[str, Any] | None = None,
    ) -> Written:
        """INSERT ... SELECT FROM agents [ON CONFLICT (tenant, idempotency_key) DO NOTHING]."""
        now = datetime.now(UTC)
        row: Row = (
            {col: None for col in ATTRIBUTE_OF}
            | copy.deepcopy(SERVER_DEFAULTS)
            | {"created_at": now, "updated_at": now}
        )
        row |= {col: _evaluate(col, v, None, now, params or {}) for col, v in _columns(values).items()}
        self._refuse_previous_from_row(events, sources=None)
        agent = self.get_agent(values["agent_id"], tenant=agent_tenant)
        if agent is None:
            return Written(None, [])
        spent = self.usage_today.get(agent.id, {}).get("total_tokens", 0)
        if agent.daily_token_budget is not None and spent >= agent.daily_token_budget:
            return Written(None, [])
        if any(row[col] is None for col in _NOT_NULL_WITHOUT_DEFAULT) or row["id"] in self.rows:
            raise DatabaseError("create_execution failed: IntegrityError")
        key = row["idempotency_key"]
        if key is not None and any(
            (r["tenant"], r["idempotency_key"]) == (row["tenant"], key) for r in self.rows.values()
        ):
            if skip_if_key_exists:
                return Written(None, [])
            raise DatabaseError("create_execution failed: IntegrityError")
        self.rows[row["id"]] = row
        return self._logged(row, history, events, now, None, None)

    # ------------------------------------------------------- task collisions

    def _task_rows(self, tenant: str, task_id: Any) -> list[Row]:
        return sorted(
            (r for r in self.rows.values() if r["tenant"] == tenant and r["task_id"] == task_id),
            key=lambda r: (r["created_at"], str(r["id"])),
        )

    def create_execution_for_task(
        self,
        values: dict[str, Any],
        *,
        history: list[History],
        events: list[EventSpec],
        agent_tenant: str | None,
        skip_if_key_exists: bool = False,
        on_conflict: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[Written, str, list[uuid.UUID]]:
        """The policy (request, agent, allow), the task's active executions, then the insert."""
        agent = self.agents.get(values["agent_id"])
        policy = on_conflict or (agent.on_conflict if agent is not None else None) or "allow"
        finished = {s.value for s in FINISHED_STATES}
        active = (
            []
            if policy == "allow"
            else [
                r["id"]
                for r in self._task_rows(values["tenant"], values["task_id"])
                if r["state"] not in finished
            ]
        )
        if active and policy == "reject":
            return Written(None, []), policy, active
        if policy != "allow":
            values = values | {"on_conflict": policy}
        if active and policy in ("enqueue", "interrupt") and values.get("state") == "QUEUED":
            values = values | {"waiting_reason": "task_busy"}
        written = self.create_execution(
            values,
            history=history,
            events=events,
            agent_tenant=agent_tenant,
            skip_if_key_exists=skip_if_key_exists,
            params=params,
        )
        return written, policy, active

    def _task_idle(self, tenant: str, task_id: Any) -> bool:
        finished = {s.value for s in FINISHED_STATES}
        return not any(
            r["state"] not in finished and r.get("waiting_reason") != "task_busy"
            for r in self._task_rows(tenant, task_id)
        )

    def _task_waiting(self, tenant: str, task_id: Any) -> list[Row]:
        return [
            r
            for r in self._task_rows(tenant, task_id)
            if r["state"] == "QUEUED" and r.get("waiting_reason") == "task_busy"
        ]

    def take_task_waiter(self, tenant: str, task_id: uuid.UUID) -> Any | None:
        """The oldest task_busy waiter, unmarked, once no other execution of the task is active."""
        waiting = self._task_waiting(tenant, task_id)
        interrupters = [i for i, r in enumerate(waiting) if r.get("on_conflict") == "interrupt"]
        if interrupters:  # the ones before the newest interrupter are about to be cancelled
            waiting = waiting[interrupters[-1] :]
        if not waiting or not self._task_idle(tenant, task_id):
            return None
        row = waiting[0]
        row["waiting_reason"] = None
        return SimpleNamespace(
            id=row["id"], attempt=row["attempt"], queue=row["queue"], priority=row["priority"]
        )

    def idle_task_waiters(self, limit: int) -> list[Any]:
        """(tenant, task_id) of tasks whose executions all ended or wait."""
        keys = {
            (r["tenant"], r["task_id"])
            for r in self.rows.values()
            if r["state"] == "QUEUED" and r.get("waiting_reason") == "task_busy"
        }
        return [
            SimpleNamespace(tenant=t, task_id=k) for t, k in sorted(keys, key=str) if self._task_idle(t, k)
        ][:limit]

    def transition(
        self,
        execution_id: uuid.UUID,
        target: ExecutionState,
        *,
        expected_state: ExecutionState | None,
        sources: frozenset[ExecutionState] | None = None,
        expected_attempt: int | None = None,
        tenant: str | None = None,
        values: dict[str, Any] | None = None,
        reason: str | None = None,
        events: list[EventSpec],
        params: dict[str, Any] | None = None,
        with_agent: bool = False,
        slot: str | None = None,
        tenant_limit: int = 0,
        release_task: bool = False,
        usage: dict[str, int] | None = None,
    ) -> Written:
        """The guarded UPDATE into `target`, its history row and its events; with `slot`
        "take" only when a concurrency slot is free, "release" says whether some wait."""
        if expected_state is None and not sources:
            raise ValueError("a transition needs an expected state or the states it may come from")
        target_value = ExecutionState(target).value
        from_state = None if expected_state is None else ExecutionState(expected_state).value
        row = self.rows.get(execution_id)
        if slot == "take" and row is not None and not self._slot_free(row, tenant_limit):
            return Written(None, [])
        written = self._update(
            execution_id,
            guards=_guards(expected_state, expected_attempt, tenant),
            values={"state": target_value, "updated_at": Expr.NOW} | (values or {}),
            events=events,
            history=[(from_state, target_value, reason)],
            sources=None if expected_state is not None else sorted(s.value for s in sources or ()),
            params=params,
            with_agent=with_agent,
            usage=usage,
        )
        if release_task and written.execution is not None and written.execution.task_id is not None:
            written.task_waiters = bool(
                self._task_waiting(written.execution.tenant, written.execution.task_id)
            )
        if slot == "release" and written.execution is not None:
            written.waiters = self._has_waiters(
                written.execution.tenant, written.execution.agent_id, tenant_limit
            )
        return written

    # ------------------------------------------------------- concurrency slots

    tenant_limits: dict[str, int]

    def _limits(self, row: Row, tenant_limit: int) -> tuple[int | None, int]:
        agent = self.agents.get(row["agent_id"])
        return (None if agent is None else agent.max_concurrency), self.tenant_limits.get(
            row["tenant"], tenant_limit
        )

    def _held(self, **match: Any) -> int:
        slots = {s.value for s in SLOT_STATES}
        return sum(
            1 for r in self.rows.values() if r["state"] in slots and all(r[k] == v for k, v in match.items())
        )

    def _slot_free(self, row: Row, tenant_limit: int) -> bool:
        agent_limit, tenant = self._limits(row, tenant_limit)
        if tenant > 0 and self._held(tenant=row["tenant"]) >= tenant:
            return False
        return agent_limit is None or self._held(agent_id=row["agent_id"]) < agent_limit

    def _waiting(self, tenant: str) -> list[Row]:
        return [
            r
            for r in self.rows.values()
            if r["tenant"] == tenant
            and r["state"] == "QUEUED"
            and r.get("waiting_reason") == "concurrency_limit"
        ]

    def _has_waiters(self, tenant: str, agent_id: uuid.UUID, tenant_limit: int) -> bool:
        agent = self.agents.get(agent_id)
        limited = self.tenant_limits.get(tenant, tenant_limit) > 0 or (
            agent is not None and agent.max_concurrency
        )
        return bool(limited) and bool(self._waiting(tenant))

    def mark_waiting(self, execution_id: uuid.UUID, attempt: int, tenant_limit: int) -> bool | None:
        """Mark a QUEUED execution waiting for a slot unless one is free (False) or it moved on (None)."""
        row = self.rows.get(execution_id)
        if row is None or row["state"] != "QUEUED" or row["attempt"] != attempt:
            return None
        if self._slot_free(row, tenant_limit):
            return False
        row["waiting_reason"] = "concurrency_limit"
        return True

    def take_waiters(self, tenant: str, agent_id: uuid.UUID, count: int) -> list[Any]:
        """The best `count` waiters (this agent's first, then priority, then age), unmarked."""
        best = sorted(
            self._waiting(tenant),
            key=lambda r: (r["agent_id"] != agent_id, -r["priority"], r["queued_at"], str(r["id"])),
        )[:count]
        for r in best:
            r["waiting_reason"] = None
        return [
            SimpleNamespace(id=r["id"], attempt=r["attempt"], queue=r["queue"], priority=r["priority"])
            for r in best
        ]

    def record_progress(
        self,
        execution_id: uuid.UUID,
        percentage: float,
        message: str | None,
        context_update: dict[str, Any] | None = None,
        *,
        events: list[EventSpec],
        expected_attempt: int | None = None,
    ) -> Written:
        """Progress of a RUNNING execution, never lower, with its context merged and its events."""
        guards: Row = {"state": ExecutionState.RUNNING.value, "progress_percentage": percentage}
        if expected_attempt is not None:
            guards["attempt"] = expected_attempt
        values: Row = {"progress_percentage": percentage, "progress_message": message, "updated_at": Expr.NOW}
        if context_update:
            values["context"] = Expr.MERGE_CONTEXT
        return self._update(
            execution_id,
            guards=guards,
            values=values,
            events=events,
            params={"context_update": context_update} if context_update else None,
        )

    def save_checkpoint(
        self,
        execution_id: uuid.UUID,
        attempt: int,
        context_update: dict[str, Any],
        usage: dict[str, int] | None = None,
    ) -> bool:
        """Merge into context while this attempt holds the execution; add the step's usage."""
        written = self._update(
            execution_id,
            guards={"attempt": attempt},
            values={"context": Expr.MERGE_CONTEXT, "updated_at": Expr.NOW},
            sources=_HELD,
            params={"context_update": context_update},
            usage=usage,
        )
        return written.execution is not None

    # ------------------------------------------------------- the writer, in Python

    def _update(
        self,
        execution_id: uuid.UUID,
        *,
        guards: Mapping[str, Any],
        values: Mapping[str, Any],
        events: list[EventSpec] = (),  # type: ignore[assignment]
        history: list[History] = (),  # type: ignore[assignment]
        sources: list[str] | None = None,
        params: Mapping[str, Any] | None = None,
        with_agent: bool = False,
        usage: Mapping[str, int] | None = None,
    ) -> Written:
        if usage is not None:
            values = dict(values) | USAGE_VALUES
            params = dict(params or {}) | usage_params(usage)
        changes = _columns(values)
        self._refuse_previous_from_row(events, sources)
        old = self.rows.get(execution_id)
        if old is None or not _holds(old, guards) or (sources is not None and old["state"] not in sources):
            return Written(None, [])
        now = datetime.now(UTC)
        new = old | {col: _evaluate(col, v, old, now, params or {}) for col, v in changes.items()}
        self.rows[execution_id] = new
        previous = old["state"] if sources is not None else None
        if usage is not None:
            day = self.usage_today.setdefault(new["agent_id"], {"executions": 0, "total_tokens": 0})
            day["executions"] += int(usage.get("ended", 0))
            day["total_tokens"] += int(usage.get("total_tokens", 0))
        agent = None
        if with_agent and (a := self.agents.get(new["agent_id"])) is not None:
            agent = _jsonb(
                {
                    "model": a.model,
                    "system_prompt": a.system_prompt,
                    "parameters": a.parameters,
                    "daily_token_budget": a.daily_token_budget,
                    "tokens_today": self.usage_today.get(a.id, {}).get("total_tokens"),
                }
            )
        return self._logged(new, history, events, now, previous, agent)

    @staticmethod
    def _refuse_previous_from_row(events: Iterable[EventSpec], sources: list[str] | None) -> None:
        if sources is None and any(spec.previous_from_row for spec in events):
            raise ValueError("previous_state is read from the row only by a write with sources")

    def _logged(
        self,
        row: Row,
        history: Iterable[History],
        events: Iterable[EventSpec],
        now: datetime,
        previous: str | None,
        agent: dict[str, Any] | None,
    ) -> Written:
        execution = execution_from_row(copy.deepcopy(row))
        for i, (from_state, to_state, reason) in enumerate(history):
            self.history.append(
                ExecutionStateHistory(
                    id=len(self.history) + 1,
                    execution_id=row["id"],
                    to_state=to_state,
                    reason=reason,
                    from_state=previous if previous is not None and i == 0 else from_state,
                    created_at=now,
                )
            )
        logged = []
        for spec in events:
            event = ExecutionEvent(
                id=len(self.events) + 1,
                execution_id=row["id"],
                type=spec.type,
                payload=_jsonb(render_payload(spec, execution, previous)),
                created_at=now,
            )
            self.events.append(event)
            logged.append(event)
        return Written(execution, logged, previous, agent)


class FakeEventBus:
    """Records what would be published on Redis, in order."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish_many(self, messages: Iterable[tuple[str, dict[str, Any]]]) -> bool:
        self.published.extend(messages)
        return True
