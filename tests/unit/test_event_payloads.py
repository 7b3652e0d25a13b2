"""Event payload shapes (seed contract) and the published message format."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from app import events
from app.execution.event_emitter import ExecutionEventEmitter, event_message
from app.models import Execution, ExecutionEvent


class _Session:
    def __init__(self) -> None:
        self.added: list = []

    def add(self, row) -> None:  # type: ignore[no-untyped-def]
        self.added.append(row)


class _Bus:
    def __init__(self) -> None:
        self.sent: list = []

    def publish_many(self, messages) -> bool:  # type: ignore[no-untyped-def]
        self.sent.extend(messages)
        return True


def _execution(**kw) -> Execution:  # type: ignore[no-untyped-def]
    base = dict(
        id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        task_id=None,
        state="RUNNING",
        progress_percentage=40.0,
        progress_message="Step a",
        result=None,
        error_message=None,
    )
    return Execution(**(base | kw))


def test_state_changed_payload_has_the_seed_fields():
    ex = _execution()
    row = ExecutionEventEmitter(_Bus()).emit_state_changed(ex, "QUEUED", "claimed", session=_Session())
    assert row.type == events.STATE_CHANGED
    assert set(row.payload) == {
        "execution_id",
        "agent_id",
        "task_id",
        "previous_state",
        "new_state",
        "reason",
        "timestamp",
    }
    assert row.payload["previous_state"] == "QUEUED"
    assert row.payload["new_state"] == "RUNNING"
    assert row.payload["task_id"] is None


def test_progress_payload_has_percentage_and_message():
    row = ExecutionEventEmitter(_Bus()).emit_progress_updated(_execution(), session=_Session())
    assert row.type == events.PROGRESS
    assert row.payload["percentage"] == 40.0
    assert row.payload["message"] == "Step a"


def test_completed_payload_has_final_state_and_result_or_error():
    ex = _execution(state="FAILED", error_message="boom")
    row = ExecutionEventEmitter(_Bus()).emit_execution_completed(ex, session=_Session())
    assert row.type == events.COMPLETED
    assert row.payload["state"] == "FAILED"
    assert row.payload["error_message"] == "boom"
    assert row.payload["result"] is None


def test_requires_action_payload_names_the_execution_and_the_calls_it_waits_for():
    from app.execution.event_emitter import render_payload

    waiting = {
        "type": "submit_tool_outputs",
        "tool_calls": [{"id": "call_1_0", "name": "lookup", "arguments": {"q": "x"}}],
        "expires_at": "2030-01-01T00:00:00+00:00",
    }
    ex = _execution(state="REQUIRES_ACTION", required_action=waiting)
    spec = ExecutionEventEmitter.requires_action()
    payload = render_payload(spec, ex)
    assert spec.type == events.REQUIRES_ACTION == "agent.execution.requires_action"
    assert payload == {
        "execution_id": str(ex.id),
        "agent_id": str(ex.agent_id),
        "task_id": None,
        "required_action": waiting,
    }


def test_the_published_message_carries_the_row_id_type_and_payload():
    ex_id = uuid.uuid4()
    row = ExecutionEvent(
        id=42,
        execution_id=ex_id,
        type=events.PROGRESS,
        payload={"percentage": 1},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert event_message(row) == {
        "id": 42,
        "type": events.PROGRESS,
        "execution_id": str(ex_id),
        "created_at": "2026-01-01T00:00:00+00:00",
        "payload": {"percentage": 1},
    }
    bus = _Bus()
    ExecutionEventEmitter(bus).publish([row])
    assert bus.sent == [(events.PROGRESS, event_message(row))]


def test_the_per_execution_channel_is_named_after_the_execution():
    ex_id = uuid.uuid4()
    assert events.execution_channel(ex_id) == f"agent.execution.events.{ex_id}"
