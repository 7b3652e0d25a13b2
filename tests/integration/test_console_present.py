"""The console's plain words: why an execution is not moving and the time spent in each state.
Pure functions of a row and a clock (they sit beside the console's route tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from api.console.present import actions_for, output, seconds, step_outputs, timeline, why_not_moving

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def row(state: str, **fields: Any) -> SimpleNamespace:
    base = {
        "state": state,
        "created_at": NOW - timedelta(seconds=300),
        "updated_at": NOW - timedelta(seconds=40),
        "queued_at": NOW - timedelta(seconds=40),
        "completed_at": None,
        "heartbeat_at": None,
        "waiting_reason": None,
        "worker": "w1@host",
        "queue": "executions",
        "priority": 5,
        "task_id": "t-1",
        "scheduled_at": None,
        "required_action": None,
    }
    return SimpleNamespace(**(base | fields))


@pytest.mark.parametrize(
    ("execution", "ahead", "words"),
    [
        (row("PENDING"), None, "not started"),
        (
            row("PENDING", scheduled_at=NOW + timedelta(seconds=90)),
            None,
            "Scheduled: it goes on the queue at 12:01:30 UTC (in 1 min 30 s)",
        ),
        (row("QUEUED"), 3, "Waiting 40 s in queue 'executions' (priority 5) for a worker; 3 of this tenant"),
        (row("QUEUED", waiting_reason="concurrency_limit"), None, "Waiting 40 s for a concurrency slot"),
        (row("QUEUED", waiting_reason="task_busy"), None, "earlier execution of task t-1"),
        (row("QUEUED", queued_at=NOW + timedelta(seconds=7)), None, "back on the queue in 7 s"),
        (row("RUNNING", heartbeat_at=NOW - timedelta(seconds=2)), None, "last heartbeat 2 s ago"),
        (
            row("RUNNING", heartbeat_at=NOW - timedelta(seconds=95)),
            None,
            "No heartbeat for 1 min 35 s from w1@host: the worker looks gone, and the reaper should have "
            "recovered it by 11:59:00 UTC",
        ),
        (
            row("RUNNING", heartbeat_at=NOW - timedelta(seconds=32)),
            None,
            "No heartbeat for 32 s from w1@host: the worker looks gone; the reaper recovers it at its next "
            "sweep, by 12:00:03 UTC",
        ),
        (
            row("RUNNING", heartbeat_at=NOW - timedelta(seconds=12)),
            None,
            "No heartbeat for 12 s from w1@host (one is due every 5 s): if it stays silent, the reaper "
            "recovers it at 12:00:18 UTC",
        ),
        (
            row("REQUIRES_ACTION", required_action={"tool_calls": [{"id": "c1"}, {"id": "c2"}]}),
            None,
            "Waiting since 11:59:20 UTC (40 s) for the outputs of 2 tool call(s)",
        ),
        (row("RUNNING"), None, "no heartbeat yet"),
        (row("PAUSED"), None, "Paused (operator) for 40 s"),
        (row("CANCELLING"), None, "waiting for w1@host to stop"),
        (row("FAILED", completed_at=NOW - timedelta(hours=2)), None, "Finished: FAILED 2 h 0 min ago"),
    ],
)
def test_the_line_says_why_an_execution_is_not_moving(execution, ahead, words):  # type: ignore[no-untyped-def]
    said = why_not_moving(
        execution,
        NOW,
        lease_timeout=30,
        last_reason="operator",
        ahead=ahead,
        heartbeat_interval=5,
        reaper_interval=5,
    )
    assert words in said


def test_the_timeline_gives_each_state_its_time_and_the_last_lasts_until_now_unless_final():  # type: ignore[no-untyped-def]
    def h(state: str, ago: int, reason: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(to_state=state, created_at=NOW - timedelta(seconds=ago), reason=reason)

    running = timeline([h("QUEUED", 100), h("RUNNING", 70)], NOW)
    assert [(s.state, s.duration, s.current) for s in running] == [
        ("QUEUED", "30 s", False),
        ("RUNNING", "1 min 10 s", True),
    ]
    done = timeline([h("QUEUED", 100), h("RUNNING", 70), h("COMPLETED", 10, "done")], NOW)
    assert [s.duration for s in done] == ["30 s", "1 min 0 s", "final"] and not done[-1].current


def test_durations_and_actions_read_as_an_operator_expects():  # type: ignore[no-untyped-def]
    assert [seconds(x) for x in (-1, 59, 61, 3_700, 90_000)] == [
        "0 s",
        "59 s",
        "1 min 1 s",
        "1 h 1 min",
        "1 d 1 h",
    ]
    assert actions_for("RUNNING") == ["cancel", "pause"]
    assert actions_for("PAUSED") == ["cancel", "resume"]
    assert actions_for("FAILED") == ["retry"] and actions_for("COMPLETED") == []


def test_the_output_is_the_deltas_joined_by_step_and_a_reset_drops_what_a_step_had():  # type: ignore[no-untyped-def]
    def d(step: str | None, text: str, reset: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {"step": step, "delta": text}
        if reset:
            payload["reset"] = True
        return {"type": "agent.execution.output.delta", "payload": payload}

    assert output([d("s1", "The tide "), d("s1", "turns."), d("s2", "Twice")]) == {
        "s1": "The tide turns.",
        "s2": "Twice",
    }
    assert output([d("s1", "old"), d("s2", "kept"), d("s1", "new", reset=True)]) == {
        "s2": "kept",
        "s1": "new",
    }
    assert output([d(None, "first try"), d(None, "second", reset=True), d(None, " try")]) == {
        "": "second try"
    }
    assert step_outputs({"steps": {"a": {"output": "x"}, "b": {"output": {"k": 1}}}}) == {
        "a": "x",
        "b": '{"k": 1}',
    }
    assert step_outputs(None) == {}
