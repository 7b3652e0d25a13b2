"""The console's plain words: why an execution is not moving and the time spent in each state.
Pure functions of a row and a clock (they sit beside the console's route tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from api.console.present import actions_for, seconds, timeline, why_not_moving

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
    }
    return SimpleNamespace(**(base | fields))


@pytest.mark.parametrize(
    ("execution", "ahead", "words"),
    [
        (row("PENDING"), None, "not started"),
        (row("QUEUED"), 3, "Waiting 40 s in queue 'executions' (priority 5) for a worker; 3 of this tenant"),
        (row("QUEUED", waiting_reason="concurrency_limit"), None, "Waiting 40 s for a concurrency slot"),
        (row("QUEUED", waiting_reason="task_busy"), None, "earlier execution of task t-1"),
        (row("QUEUED", queued_at=NOW + timedelta(seconds=7)), None, "back on the queue in 7 s"),
        (row("RUNNING", heartbeat_at=NOW - timedelta(seconds=2)), None, "last heartbeat 2 s ago"),
        (row("RUNNING", heartbeat_at=NOW - timedelta(seconds=95)), None, "No heartbeat for 1 min 35 s"),
        (row("RUNNING"), None, "no heartbeat yet"),
        (row("PAUSED"), None, "Paused (operator) for 40 s"),
        (row("CANCELLING"), None, "waiting for w1@host to stop"),
        (row("FAILED", completed_at=NOW - timedelta(hours=2)), None, "Finished: FAILED 2 h 0 min ago"),
    ],
)
def test_the_line_says_why_an_execution_is_not_moving(execution, ahead, words):  # type: ignore[no-untyped-def]
    said = why_not_moving(execution, NOW, lease_timeout=30, last_reason="operator", ahead=ahead)
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
