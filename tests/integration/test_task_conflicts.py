"""Collision policy for task_id (#15): reject, enqueue and interrupt on real PostgreSQL, Redis and
a real Celery worker; the check and the insert are one atomic step under concurrent creates."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.errors import TaskBusyError
from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for

FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def _create(svc: Any, agent_id: uuid.UUID, task: uuid.UUID, **body: Any) -> Any:
    simulate = body.pop("simulate", {})
    return svc.create_execution(
        ExecutionCreate(
            agent_id=agent_id, task_id=task, parameters={"input": "x", "simulate": simulate}, **body
        )
    )[0]


def _finished(svc: Any, *ids: uuid.UUID) -> list[Any] | None:
    rows = [svc.get_execution(i) for i in ids]
    return rows if all(r.state in FINISHED for r in rows) else None


def _history(svc: Any, execution_id: uuid.UUID) -> list[tuple[str | None, str, str | None]]:
    return [(h.from_state, h.to_state, h.reason) for h in svc.get_state_history(execution_id, 100)]


def test_fifty_concurrent_rejecting_creates_of_one_task_leave_exactly_one(worker_service, session_factory):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="racy"))
    task = uuid.uuid4()
    barrier = threading.Barrier(50)

    def create(_: int) -> str:
        barrier.wait(10)
        try:
            _create(svc, agent.id, task, on_conflict="reject", simulate={"latency_ms": 2000})
            return "created"
        except TaskBusyError:
            return "rejected"

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(create, range(50)))
    assert sorted(results).count("created") == 1 and results.count("rejected") == 49
    from sqlalchemy import text

    with session_factory() as s:
        assert (
            s.execute(text("SELECT count(*) FROM executions WHERE task_id = :t"), {"t": task}).scalar_one()
            == 1
        )
        [only] = s.execute(text("SELECT id FROM executions WHERE task_id = :t"), {"t": task}).scalars()
    svc.cancel_execution(only)  # leave nothing running for the next test


def test_enqueue_runs_after_the_earlier_one_ends(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="queueing"))
    task = uuid.uuid4()
    first = _create(svc, agent.id, task, simulate={"latency_ms": 800, "chunks": 4})
    second = _create(svc, agent.id, task, on_conflict="enqueue")
    assert (second.state, second.waiting_reason) == ("QUEUED", "task_busy")
    a, b = wait_for(lambda: _finished(svc, first.id, second.id), timeout=30, what="both to finish")
    assert (a.state, b.state) == ("COMPLETED", "COMPLETED")
    assert b.started_at >= a.completed_at  # strictly one after the other
    assert b.waiting_reason is None


def test_interrupt_cancels_the_running_one_then_starts(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="interrupting"))
    task = uuid.uuid4()
    first = _create(svc, agent.id, task, simulate={"latency_ms": 20000, "chunks": 200})
    wait_for(lambda: svc.get_execution(first.id).state == "RUNNING", what="the first to run")
    second = _create(svc, agent.id, task, on_conflict="interrupt")
    a, b = wait_for(lambda: _finished(svc, first.id, second.id), timeout=30, what="both to end")
    assert (a.state, a.error_code, b.state) == ("CANCELLED", "interrupted", "COMPLETED")
    assert _history(svc, first.id)[-2:] == [
        ("RUNNING", "CANCELLING", f"interrupted by {second.id}"),
        ("CANCELLING", "CANCELLED", "cancelled while running"),
    ]
    assert b.started_at >= a.completed_at
    completed = [e.payload for e in svc.get_events(first.id) if e.type == "agent.execution.completed"]
    assert completed[-1]["error_code"] == "interrupted"


def test_reject_names_the_active_execution_and_allows_once_it_ended(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="rejecting", on_conflict="reject"))
    task = uuid.uuid4()
    first = _create(svc, agent.id, task, simulate={"latency_ms": 500})
    try:
        _create(svc, agent.id, task)
        raise AssertionError("the agent's reject policy let a second execution in")
    except TaskBusyError as exc:
        assert exc.active_execution_id == first.id
    wait_for(lambda: _finished(svc, first.id), what="the first to finish")
    assert _create(svc, agent.id, task).state == "QUEUED"


def test_interrupt_cancels_running_and_waiting_ones_and_only_the_newest_runs(worker_service):  # type: ignore[no-untyped-def]
    """Repeated: the worker's end of the interrupted run, the hand-over of the task and the
    cancels of the interrupt race each other; no deadlock, and no earlier waiter slips through."""
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="interrupt-race"))
    for round_ in range(6):
        task = uuid.uuid4()
        running = _create(svc, agent.id, task, simulate={"latency_ms": 300 + 40 * round_, "chunks": 30})
        waiting = _create(svc, agent.id, task, on_conflict="enqueue")
        if round_ % 2:
            wait_for(lambda r=running: svc.get_execution(r.id).state == "RUNNING", what="the first to run")
        newest = _create(svc, agent.id, task, on_conflict="interrupt")
        ids = (running.id, waiting.id, newest.id)
        a, w, n = wait_for(lambda ids=ids: _finished(svc, *ids), timeout=30, what="all three to end")
        assert (a.state, a.error_code) in {("CANCELLED", "interrupted"), ("COMPLETED", None)}, round_
        assert (w.state, w.error_code, w.started_at) == ("CANCELLED", "interrupted", None), round_
        assert w.waiting_reason is None, round_  # ended: it waits for nothing any more
        assert n.state == "COMPLETED" and (a.completed_at is None or n.started_at >= a.completed_at), round_
