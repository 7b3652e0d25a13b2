"""ExecutionEventEmitter: builds the seed's event payloads, logs them durably, publishes them.

Each `emit_*` call adds an `execution_events` row to the caller's transaction and
returns it; `publish` sends the committed rows over the EventBus. So an event is
in the log exactly when the change it describes is committed.

The `*_spec` methods describe the same events for the repository's one-statement
writes (UPDATE, history and event rows in one SQL statement): the part of the payload
known beforehand, and the payload keys read from the updated row (ROW_FIELDS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app import events
from app.events import EventBus
from app.models import Execution, ExecutionEvent
from app.schemas import ExecutionState


def _state(value: Any) -> str | None:
    return None if value is None else getattr(value, "value", value)


# Payload key -> executions column, for the keys that come from the row itself.
BASE_ROW_FIELDS = {"execution_id": "id", "agent_id": "agent_id", "task_id": "task_id"}
ROW_FIELDS = {
    events.STATE_CHANGED: BASE_ROW_FIELDS | {"new_state": "state"},
    events.PROGRESS: BASE_ROW_FIELDS | {"percentage": "progress_percentage", "message": "progress_message"},
    events.COMPLETED: BASE_ROW_FIELDS
    | {"state": "state", "result": "result", "error_message": "error_message"},
}


@dataclass(frozen=True)
class EventSpec:
    """An event to log in the same statement as a row update: type, known payload, row fields."""

    type: str
    static: dict[str, Any]
    previous_from_row: bool = False  # previous_state is read from the row (locked) before the update

    @property
    def from_row(self) -> dict[str, str]:
        """Payload key -> column of the updated executions row."""
        fields = ROW_FIELDS[self.type]
        return fields | {"previous_state": "previous_state"} if self.previous_from_row else fields


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _base_payload(execution: Execution) -> dict[str, Any]:
    return {
        "execution_id": str(execution.id),
        "agent_id": str(execution.agent_id),
        "task_id": None if execution.task_id is None else str(execution.task_id),
        "timestamp": _now(),
    }


def event_message(event: ExecutionEvent) -> dict[str, Any]:
    """The JSON message of an event, as published and as served over SSE."""
    return {
        "id": event.id,
        "type": event.type,
        "execution_id": str(event.execution_id),
        "created_at": event.created_at.isoformat() if event.created_at else None,
        "payload": event.payload,
    }


class ExecutionEventEmitter:
    """Handles publishing execution-related events."""

    def __init__(self, event_bus: EventBus):
        self.event_bus = event_bus

    def emit_state_changed(
        self,
        execution: Execution,
        previous_state: ExecutionState | str | None,
        reason: str | None = None,
        *,
        session: Session,
    ) -> ExecutionEvent:
        """Record `agent.execution.state_changed` in the caller's transaction."""
        payload = _base_payload(execution) | {
            "previous_state": _state(previous_state),
            "new_state": _state(execution.state),
            "reason": reason,
        }
        return self._record(session, events.STATE_CHANGED, execution, payload)

    def emit_progress_updated(self, execution: Execution, *, session: Session) -> ExecutionEvent:
        """Record `agent.execution.progress` in the caller's transaction."""
        payload = _base_payload(execution) | {
            "percentage": execution.progress_percentage,
            "message": execution.progress_message,
        }
        return self._record(session, events.PROGRESS, execution, payload)

    def emit_execution_completed(self, execution: Execution, *, session: Session) -> ExecutionEvent:
        """Record `agent.execution.completed` (any final state) in the caller's transaction."""
        payload = _base_payload(execution) | {
            "state": _state(execution.state),
            "result": execution.result,
            "error_message": execution.error_message,
        }
        return self._record(session, events.COMPLETED, execution, payload)

    def state_changed_spec(
        self,
        previous_state: ExecutionState | str | None,
        reason: str | None,
        new_state: ExecutionState | str | None = None,
        *,
        previous_from_row: bool = False,
    ) -> EventSpec:
        """`agent.execution.state_changed` for a one-statement write; `new_state` overrides the
        row's; with `previous_from_row` the previous state is the one the statement replaced."""
        static: dict[str, Any] = {"timestamp": _now(), "reason": reason}
        if not previous_from_row:
            static["previous_state"] = _state(previous_state)
        if new_state is not None:
            static["new_state"] = _state(new_state)
        return EventSpec(events.STATE_CHANGED, static, previous_from_row)

    def progress_spec(self) -> EventSpec:
        """`agent.execution.progress`, percentage and message read from the updated row."""
        return EventSpec(events.PROGRESS, {"timestamp": _now()})

    def completed_spec(self) -> EventSpec:
        """`agent.execution.completed`, final state, result and error read from the updated row."""
        return EventSpec(events.COMPLETED, {"timestamp": _now()})

    def publish(self, rows: Iterable[ExecutionEvent]) -> bool:
        """Send committed event rows over Redis, in order, in one round trip."""
        return self.event_bus.publish_many((row.type, event_message(row)) for row in rows)

    @staticmethod
    def _record(
        session: Session, event_type: str, execution: Execution, payload: dict[str, Any]
    ) -> ExecutionEvent:
        row = ExecutionEvent(execution_id=execution.id, type=event_type, payload=payload)
        session.add(row)
        return row
