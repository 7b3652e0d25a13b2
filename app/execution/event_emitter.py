"""ExecutionEventEmitter: builds the seed's event payloads, logs them durably, publishes them.

Each `emit_*` call adds an `execution_events` row to the caller's transaction and
returns it; `publish` sends the committed rows over the EventBus. So an event is
in the log exactly when the change it describes is committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app import events
from app.events import EventBus
from app.models import Execution, ExecutionEvent
from app.schemas import ExecutionState


def _state(value: Any) -> str | None:
    return None if value is None else getattr(value, "value", value)


def _base_payload(execution: Execution) -> dict[str, Any]:
    return {
        "execution_id": str(execution.id),
        "agent_id": str(execution.agent_id),
        "task_id": None if execution.task_id is None else str(execution.task_id),
        "timestamp": datetime.now(UTC).isoformat(),
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
