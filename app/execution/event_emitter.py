"""ExecutionEventEmitter: the seed's event payloads, defined once, logged with their change, published.

`PAYLOADS` is the one definition of every payload: each key is read from the written
executions row (a column name) or known beforehand (None: given when the event is
asked for, in an `EventSpec`). The transition writer turns it into SQL
(`sql_payload`), so the event row is written by the same statement as the change it
describes; `render_payload` turns it into the same dict in Python (for an in-memory
unit of work and for tests). After the commit, `publish` sends the logged rows over
the EventBus.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app import events
from app.events import EventBus
from app.models import Execution, ExecutionEvent
from app.schemas import ExecutionState

_BASE: dict[str, str | None] = {"execution_id": "id", "agent_id": "agent_id", "task_id": "task_id"}
PAYLOADS: dict[str, dict[str, str | None]] = {
    events.STATE_CHANGED: _BASE
    | {"previous_state": None, "new_state": "state", "reason": None, "timestamp": None},
    events.PROGRESS: _BASE
    | {"percentage": "progress_percentage", "message": "progress_message", "timestamp": None},
    events.COMPLETED: _BASE
    | {
        "state": "state",
        "result": "result",
        "error_message": "error_message",
        "error_code": "error_code",
        "timestamp": None,
    },
    events.REQUIRES_ACTION: _BASE | {"required_action": "required_action"},
}
# `agent.execution.output.delta` is not a logged row (app/deltas.py): its payload, once.
OUTPUT_DELTA_FIELDS = ("execution_id", "agent_id", "task_id", "step", "index", "delta", "reset")
_UUID_COLUMNS = frozenset({"id", "agent_id", "task_id"})
PREVIOUS_FROM_ROW = "previous_state"  # the state a locked transition replaced, read by its statement


def _state(value: Any) -> str | None:
    return None if value is None else getattr(value, "value", value)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class EventSpec:
    """An event to log with a write: its type and the payload part known beforehand.

    `static` may also override a row field (a creation event says PENDING for a row
    inserted already QUEUED). With `previous_from_row` the previous state is the one
    the statement replaced.
    """

    type: str
    static: dict[str, Any] = field(default_factory=dict)
    previous_from_row: bool = False


def sql_payload(event_type: str, previous_from_row: bool, *, static: str, row: str = "u") -> str:
    """The payload of `event_type` as SQL: row fields of `row`, then the known part `static` over them."""
    parts = []
    for key, column in PAYLOADS[event_type].items():
        if column is None and key == "previous_state" and previous_from_row:
            column = PREVIOUS_FROM_ROW
        if column is None:
            continue
        value = f"{row}.{column}::text" if column in _UUID_COLUMNS else f"{row}.{column}"
        parts.append(f"'{key}', {value}")
    return f"(jsonb_build_object({', '.join(parts)}) || {static})"


def render_payload(spec: EventSpec, row: Execution, previous_state: str | None = None) -> dict[str, Any]:
    """The payload of `spec` for `row` in Python: the same dict `sql_payload` builds."""
    payload: dict[str, Any] = {}
    for key, column in PAYLOADS[spec.type].items():
        if column is None and key == "previous_state" and spec.previous_from_row:
            payload[key] = previous_state
        elif column is not None:
            value = getattr(row, column)
            payload[key] = str(value) if column in _UUID_COLUMNS and value is not None else _state(value)
    return payload | spec.static


def event_message(event: ExecutionEvent) -> dict[str, Any]:
    """The JSON message of an event, as published and as served over SSE."""
    return {
        "id": event.id,
        "type": event.type,
        "execution_id": str(event.execution_id),
        "created_at": event.created_at.isoformat() if event.created_at else None,
        "payload": event.payload,
    }


def output_delta_message(execution: Execution, step: str | None, delta: str, reset: bool) -> dict[str, Any]:
    """The message of one output delta, without the `id` and `index` its store assigns."""
    payload: dict[str, Any] = {
        "execution_id": str(execution.id),
        "agent_id": str(execution.agent_id),
        "task_id": None if execution.task_id is None else str(execution.task_id),
        "step": step,
        "delta": delta,
    }
    if reset:
        payload["reset"] = True
    return {
        "type": events.OUTPUT_DELTA,
        "execution_id": str(execution.id),
        "created_at": _now(),
        "payload": payload,
    }


class ExecutionEventEmitter:
    """Handles publishing execution-related events."""

    def __init__(self, event_bus: EventBus):
        self.event_bus = event_bus

    # The specs: what the transition writer logs with a change.

    @staticmethod
    def state_changed(
        previous_state: ExecutionState | str | None,
        reason: str | None,
        new_state: ExecutionState | str | None = None,
        *,
        previous_from_row: bool = False,
    ) -> EventSpec:
        """`agent.execution.state_changed`; `new_state` overrides the row's state."""
        static: dict[str, Any] = {"timestamp": _now(), "reason": reason}
        if not previous_from_row:
            static["previous_state"] = _state(previous_state)
        if new_state is not None:
            static["new_state"] = _state(new_state)
        return EventSpec(events.STATE_CHANGED, static, previous_from_row)

    @staticmethod
    def progress() -> EventSpec:
        """`agent.execution.progress`: percentage and message of the written row."""
        return EventSpec(events.PROGRESS, {"timestamp": _now()})

    @staticmethod
    def completed() -> EventSpec:
        """`agent.execution.completed`: final state, result and error of the written row."""
        return EventSpec(events.COMPLETED, {"timestamp": _now()})

    @staticmethod
    def requires_action() -> EventSpec:
        """`agent.execution.requires_action`: the tool calls the written row waits for."""
        return EventSpec(events.REQUIRES_ACTION)

    # The seed's emit_* methods: the same specs rendered for a row held in memory.

    def emit_state_changed(
        self,
        execution: Execution,
        previous_state: ExecutionState | str | None,
        reason: str | None = None,
        *,
        session: Session | None = None,
    ) -> ExecutionEvent:
        """`agent.execution.state_changed` of `execution`, added to `session` when given."""
        return self._record(self.state_changed(previous_state, reason), execution, session)

    def emit_progress_updated(
        self, execution: Execution, *, session: Session | None = None
    ) -> ExecutionEvent:
        """`agent.execution.progress` of `execution`, added to `session` when given."""
        return self._record(self.progress(), execution, session)

    def emit_execution_completed(
        self, execution: Execution, *, session: Session | None = None
    ) -> ExecutionEvent:
        """`agent.execution.completed` (any final state) of `execution`, added to `session` when given."""
        return self._record(self.completed(), execution, session)

    def publish(self, rows: Iterable[ExecutionEvent]) -> bool:
        """Send committed event rows over Redis, in order, in one round trip."""
        return self.event_bus.publish_many((row.type, event_message(row)) for row in rows)

    @staticmethod
    def _record(spec: EventSpec, execution: Execution, session: Session | None) -> ExecutionEvent:
        row = ExecutionEvent(
            execution_id=execution.id, type=spec.type, payload=render_payload(spec, execution)
        )
        if session is not None:
            session.add(row)
        return row
