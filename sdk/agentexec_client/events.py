"""The events of an execution: the logged envelope (`EventOut`) with a typed payload per event type.

An event's id is an int for a logged event and `"E.k"` for an output delta (the k-th
delta placed after logged event E); `event_position` orders both.

`parse_event` turns one event (a JSON page item or an SSE frame's data) into the class
of its type; a type this client does not know, or a payload it cannot read, stays a
plain `Event` with its payload as a dict, so a newer server never breaks a stream.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from agentexec_client.models import ErrorCodeValue, ExecutionState, Model


class EventType(str, enum.Enum):
    """The event types an execution emits."""

    STATE_CHANGED = "agent.execution.state_changed"
    PROGRESS = "agent.execution.progress"
    COMPLETED = "agent.execution.completed"
    OUTPUT_DELTA = "agent.execution.output.delta"

    def __str__(self) -> str:
        return self.value


class _Envelope(Model):
    """What every logged event has: its position in the log, its type and its execution."""

    SCHEMA = "EventOut"
    id: int | str
    """A logged event's id (an int), or an output delta's `"E.k"`: compare with `event_position`."""
    type: str
    execution_id: uuid.UUID
    created_at: datetime | None


class Event(_Envelope):
    """An event of any type; `payload` as sent."""

    payload: dict[str, Any]


class _Payload(Model):
    """Fields of every payload (not in /openapi.json: checked against the server's PAYLOADS)."""

    execution_id: uuid.UUID
    agent_id: uuid.UUID
    task_id: uuid.UUID | None
    timestamp: datetime | None


class StateChangedPayload(_Payload):
    """A transition: from `previous_state` (None at creation) to `new_state`."""

    previous_state: ExecutionState | None
    new_state: ExecutionState
    reason: str | None


class ProgressPayload(_Payload):
    """How far the run is and what it is doing."""

    percentage: float
    message: str | None


class CompletedPayload(_Payload):
    """The end of a run (any final state), with its result or error."""

    state: ExecutionState
    result: dict[str, Any] | None
    error_message: str | None
    error_code: ErrorCodeValue | None = None
    """Why it ended FAILED, TIMED_OUT or CANCELLED; None otherwise (and in events logged before
    the API had error codes)."""


class OutputDeltaPayload(Model):
    """A piece of the model's output as it streams. Joined in order, a step's deltas are the
    step's output; `reset` (on a retried attempt's first delta) says: drop the text held so
    far for this step (`step` None: a standard task's whole output)."""

    execution_id: uuid.UUID
    agent_id: uuid.UUID
    task_id: uuid.UUID | None
    step: str | None
    index: int
    delta: str
    reset: bool = False


class StateChangedEvent(_Envelope):
    """`agent.execution.state_changed`."""

    type: Literal["agent.execution.state_changed"]
    payload: StateChangedPayload


class ProgressEvent(_Envelope):
    """`agent.execution.progress`."""

    type: Literal["agent.execution.progress"]
    payload: ProgressPayload


class CompletedEvent(_Envelope):
    """`agent.execution.completed`: the last event of a run."""

    type: Literal["agent.execution.completed"]
    payload: CompletedPayload


class OutputDeltaEvent(_Envelope):
    """`agent.execution.output.delta`: live model output (not in the JSON log unless asked for)."""

    type: Literal["agent.execution.output.delta"]
    payload: OutputDeltaPayload


AnyEvent = StateChangedEvent | ProgressEvent | CompletedEvent | OutputDeltaEvent | Event
TYPED: dict[
    str, type[StateChangedEvent] | type[ProgressEvent] | type[CompletedEvent] | type[OutputDeltaEvent]
] = {
    EventType.STATE_CHANGED.value: StateChangedEvent,
    EventType.PROGRESS.value: ProgressEvent,
    EventType.COMPLETED.value: CompletedEvent,
    EventType.OUTPUT_DELTA.value: OutputDeltaEvent,
}


def event_position(event_id: int | str) -> tuple[int, int]:
    """Where an event id sorts: `E` before `E.0` before `E.1` before `E+1`."""
    head, _, tail = str(event_id).partition(".")
    return int(head), int(tail) if tail else -1


def parse_event(data: dict[str, Any]) -> AnyEvent:
    """The typed event of `data`, or a plain Event when its type or payload is unknown here."""
    typed = TYPED.get(str(data.get("type")))
    if typed is not None:
        try:
            return typed.model_validate(data)
        except ValidationError:
            pass
    return Event.model_validate(data)
