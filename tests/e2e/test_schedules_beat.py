"""Schedules driven by real beat processes: TWO `celery -A workers beat` (as by mistake) and a
worker, on a private PostgreSQL and Redis. A delayed start runs once, after its delay; a cron
schedule's minute tick creates exactly one execution, however many tick tasks both beats send.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from app.schemas import ExecutionFilters, Pagination, ScheduleCreate
from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import Stack

pytestmark = pytest.mark.e2e
TICK_TASK = "agentexec.schedules.tick"


@pytest.fixture(scope="module")
def stack(new_database: Any, redis_server: Any, open_stack: Any) -> Iterator[Stack]:
    """Two beat processes and one worker (which also takes the reaper's queue, where ticks go)."""
    s = open_stack(new_database(), redis_server.url)
    s.start_beat()
    s.start_beat()
    s.worker = s.start_worker("schedules-w1", concurrency=8)  # type: ignore[attr-defined]
    yield s
    close_stack(s)


def _ticks_run(stack: Stack) -> int:
    return sum(
        1
        for line in stack.worker.log_text().splitlines()  # type: ignore[attr-defined]
        if TICK_TASK in line and "succeeded" in line
    )


def _finished(stack: Stack, execution_id: uuid.UUID) -> Any:
    row = stack.service.get_execution(execution_id)
    return row if row.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") else None


def test_two_beats_start_a_delayed_execution_once_after_its_delay(stack: Stack) -> None:
    ids = [stack.submit({"input": f"later {i}"}, delay_seconds=2).id for i in range(10)]
    for execution_id in ids:
        done = wait_for(lambda i=execution_id: _finished(stack, i), timeout=30, what="a delayed run")
        assert done.state == "COMPLETED" and done.attempt == 1
        history = stack.service.get_state_history(execution_id, 20)
        queued = [h for h in history if h.to_state == "QUEUED"]
        assert [h.reason for h in queued] == ["scheduled start"]
        assert queued[0].created_at >= done.created_at + timedelta(seconds=2)
        assert done.scheduled_at >= done.created_at + timedelta(seconds=2)


def test_two_beats_make_one_execution_for_a_minute_tick(stack: Stack) -> None:
    svc = stack.service
    schedule = svc.create_schedule(
        ScheduleCreate(agent_id=stack.agent.id, cron="* * * * *", parameters={"input": "every minute"})
    )
    tick = schedule.next_run_at
    assert tick is not None

    def runs() -> list[Any]:
        rows, _ = svc.list_executions(
            ExecutionFilters(metadata={"schedule_id": str(schedule.id)}), Pagination(page_size=50)
        )
        return rows

    first = wait_for(lambda: runs(), timeout=90, what="the first minute tick's execution")
    assert wait_for(lambda: _finished(stack, first[0].id), timeout=30).state == "COMPLETED"
    # Let both beats send several more tick tasks after it: none may add a second run of the tick.
    seen = _ticks_run(stack)
    wait_for(lambda: _ticks_run(stack) >= seen + 6, timeout=30, what="more tick passes")
    made = [r for r in runs() if r.metadata_["schedule_tick"] == tick.isoformat()]
    assert len(made) == 1
    row = svc.get_schedule(schedule.id)
    assert row.last_execution_id in {r.id for r in runs()} and row.next_run_at > tick
