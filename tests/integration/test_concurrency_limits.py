"""Concurrency limits (#15): slots taken atomically at claim, given back by every way out.

A real Celery worker (threads pool, 8 threads racing for claims) on real PostgreSQL and
Redis; PostgreSQL is sampled from another connection while the executions run.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from sqlalchemy import text

from app.schemas import AgentCreate, AgentUpdate, ExecutionCreate
from tests.conftest import wait_for
from tests.tool_server import LOOKUP

FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class Sampler:
    """Counts RUNNING/PAUSING executions of an agent every 20 ms from its own connection."""

    def __init__(self, session_factory: Any, agent_id: uuid.UUID):
        self.session_factory, self.agent_id = session_factory, agent_id
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.session_factory() as s:
            while not self._stop.is_set():
                n = s.execute(
                    text(
                        "SELECT count(*) FROM executions WHERE agent_id = :a"
                        " AND state IN ('RUNNING', 'PAUSING')"
                    ),
                    {"a": self.agent_id},
                ).scalar_one()
                s.rollback()  # a fresh snapshot for the next sample
                self.samples.append(int(n))
                time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _states(svc: Any, ids: list[uuid.UUID]) -> list[str]:
    return [svc.get_execution(i).state for i in ids]


def _all_finished(svc: Any, ids: list[uuid.UUID]) -> list[str] | None:
    states = _states(svc, ids)
    return states if all(s in FINISHED for s in states) else None


def _create(svc: Any, agent_id: uuid.UUID, n: int, **simulate: Any) -> list[uuid.UUID]:
    return [
        svc.create_execution(
            ExecutionCreate(agent_id=agent_id, parameters={"input": f"i{i}", "simulate": simulate})
        )[0].id
        for i in range(n)
    ]


def _hold_the_only_slot(svc: Any, agent_id: uuid.UUID) -> uuid.UUID:
    """A 20 s run of the agent, RUNNING: with a limit of 1 it holds the only slot until cancelled."""
    [long] = _create(svc, agent_id, 1, latency_ms=20000, chunks=100)
    wait_for(lambda: svc.get_execution(long).state == "RUNNING", what="the long one to run")
    return long


def test_a_limit_of_two_never_lets_a_third_run_and_all_ten_complete(worker_service, session_factory):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="capped", max_concurrency=2))
    with Sampler(session_factory, agent.id) as sampler:
        ids = _create(svc, agent.id, 10, latency_ms=300, chunks=3)
        states = wait_for(lambda: _all_finished(svc, ids), timeout=60, what="all ten to finish")
    assert states == ["COMPLETED"] * 10
    assert max(sampler.samples) == 2, sampler.samples  # the limit was reached, never passed
    assert len(sampler.samples) > 50
    rows = [svc.get_execution(i) for i in ids]
    assert all(r.waiting_reason is None and r.attempt == 1 for r in rows)


def test_a_waiting_execution_says_why_and_starts_when_the_slot_frees(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="single", max_concurrency=1))
    [first] = _create(svc, agent.id, 1, latency_ms=5000, chunks=50)
    wait_for(lambda: svc.get_execution(first).state == "RUNNING", what="the first to run")
    [second] = _create(svc, agent.id, 1)
    waiting = wait_for(
        lambda: (row := svc.get_execution(second)).waiting_reason and row,
        what="the second to wait for the slot",
    )
    assert (waiting.state, waiting.waiting_reason) == ("QUEUED", "concurrency_limit")
    svc.cancel_execution(first, reason="free the slot")
    done = wait_for(lambda: _all_finished(svc, [first, second]), timeout=30, what="both to end")
    assert done == ["CANCELLED", "COMPLETED"]
    assert svc.get_execution(second).waiting_reason is None


def test_slots_come_back_after_failure_cancel_and_timeout(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="ways-out", max_concurrency=1))
    failing = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x", "simulate": {"fail_permanently": True}})
    )[0].id
    timing_out = svc.create_execution(
        ExecutionCreate(
            agent_id=agent.id, parameters={"input": "x", "simulate": {"latency_ms": 5000}}, timeout_seconds=1
        )
    )[0].id
    cancelled = svc.create_execution(
        ExecutionCreate(
            agent_id=agent.id, parameters={"input": "x", "simulate": {"latency_ms": 20000, "chunks": 100}}
        )
    )[0].id
    after = _create(svc, agent.id, 2)

    def cancel_when_running() -> bool:
        if svc.get_execution(cancelled).state == "RUNNING":
            svc.cancel_execution(cancelled, reason="done waiting")
            return True
        return False

    wait_for(cancel_when_running, timeout=30, what="the long one to get the slot")
    states = wait_for(
        lambda: _all_finished(svc, [failing, timing_out, cancelled, *after]), timeout=40, what="all to end"
    )
    assert states == ["FAILED", "TIMED_OUT", "CANCELLED", "COMPLETED", "COMPLETED"]


def test_raising_the_limit_starts_waiters_at_once(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="raised", max_concurrency=1))
    long = _hold_the_only_slot(svc, agent.id)
    short = _create(svc, agent.id, 3)
    wait_for(
        lambda: all(svc.get_execution(i).waiting_reason == "concurrency_limit" for i in short),
        what="three to wait",
    )
    svc.update_agent(agent.id, AgentUpdate(max_concurrency=None))
    assert (
        wait_for(lambda: _all_finished(svc, short), timeout=30, what="the waiters to run")
        == ["COMPLETED"] * 3
    )
    svc.cancel_execution(long)


def test_the_slot_of_a_lost_worker_comes_back_when_the_reaper_recovers_it(worker_service, session_factory):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="orphaned", max_concurrency=1))
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"  # no worker reads it: the "dead" run stays dead
    lost = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, queue=nobody))[
        0
    ].id
    with session_factory() as s:  # it was RUNNING on a worker that died a minute ago
        s.execute(
            text(
                "UPDATE executions SET state = 'RUNNING', worker = 'dead',"
                " heartbeat_at = now() - interval '1 hour'"
                " WHERE id = :i"
            ),
            {"i": lost},
        )
        s.commit()
    [waiter] = _create(svc, agent.id, 1)
    wait_for(
        lambda: svc.get_execution(waiter).waiting_reason == "concurrency_limit", what="the waiter to wait"
    )
    assert svc.reap()["requeued"] == 1  # the lost run goes back to QUEUED: its slot is free
    assert wait_for(lambda: _all_finished(svc, [waiter]), timeout=30, what="the waiter to run") == [
        "COMPLETED"
    ]
    assert svc.get_execution(lost).state == "QUEUED"


def test_the_reaper_wakes_a_waiter_whose_wake_up_was_lost(worker_service, session_factory):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="forgotten", max_concurrency=3))
    [stranded] = [
        svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False))[0].id
    ]
    with session_factory() as s:  # as if its claim marked it and the run that freed a slot then crashed
        s.execute(
            text(
                "UPDATE executions SET state = 'QUEUED', attempt = 1,"
                " waiting_reason = 'concurrency_limit' WHERE id = :i"
            ),
            {"i": stranded},
        )
        s.commit()
    counts = svc.reap()
    assert counts["woken"] == 1 and counts["redelivered"] == 0
    assert wait_for(lambda: _all_finished(svc, [stranded]), timeout=30, what="the waiter to run") == [
        "COMPLETED"
    ]


def _cli(*args: str) -> Any:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "agentexec"
    done = subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stderr


def test_a_tenant_limit_set_from_the_cli_caps_the_tenant_and_unsetting_it_starts_the_waiters(worker_service):  # type: ignore[no-untyped-def]
    from app.models import DEFAULT_TENANT

    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="tenant-capped"))
    assert "at most 1 executions" in _cli("tenants", "set-limit", DEFAULT_TENANT, "1")
    long = _hold_the_only_slot(svc, agent.id)
    [short] = _create(svc, agent.id, 1)
    wait_for(
        lambda: svc.get_execution(short).waiting_reason == "concurrency_limit", what="the second to wait"
    )
    [row] = [r for r in _cli("tenants", "list", "--json") if r["tenant"] == DEFAULT_TENANT]
    assert row == {
        "tenant": DEFAULT_TENANT,
        "max_concurrency": 1,
        "own_limit": True,
        "running": 1,
        "waiting": 1,
    }
    _cli("tenants", "unset-limit", DEFAULT_TENANT)  # TENANT_MAX_CONCURRENCY (0: none) applies again
    assert wait_for(lambda: _all_finished(svc, [short]), timeout=20, what="the waiter to start") == [
        "COMPLETED"
    ]
    svc.cancel_execution(long)


def test_a_wait_for_tool_outputs_gives_its_slot_to_the_waiter_at_once(worker_service):  # type: ignore[no-untyped-def]
    """RUNNING -> REQUIRES_ACTION is a way out of the slot: the execution already waiting for it
    starts without the reaper (none runs here)."""
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="asks", max_concurrency=1, tools=[LOOKUP]))
    asking = svc.create_execution(
        ExecutionCreate(
            agent_id=agent.id,
            parameters={
                "type": "agent",
                "input": "What is x?",
                "simulate": {"latency_ms": 1500, "chunks": 15, "tool_calls": [[{"name": "lookup"}]]},
            },
        )
    )[0].id
    wait_for(lambda: svc.get_execution(asking).state == "RUNNING", what="the asking run to start")
    [waiter] = _create(svc, agent.id, 1)
    wait_for(
        lambda: svc.get_execution(waiter).waiting_reason == "concurrency_limit",
        what="the second to wait for the slot",
    )
    assert svc.get_execution(asking).state == "RUNNING"  # it still held the slot then
    assert wait_for(lambda: _all_finished(svc, [waiter]), timeout=30, what="the waiter to run") == [
        "COMPLETED"
    ]
    row = svc.get_execution(asking)
    assert (row.state, row.waiting_reason) == ("REQUIRES_ACTION", None)
    svc.cancel_execution(asking)


def test_a_waiter_cancelled_while_it_waits_keeps_no_waiting_reason(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="gave-up", max_concurrency=1))
    long = _hold_the_only_slot(svc, agent.id)
    [waiter] = _create(svc, agent.id, 1)
    wait_for(
        lambda: svc.get_execution(waiter).waiting_reason == "concurrency_limit", what="the waiter to wait"
    )
    svc.cancel_execution(waiter, reason="no longer needed")
    row = svc.get_execution(waiter)
    assert (row.state, row.waiting_reason) == ("CANCELLED", None)
    svc.cancel_execution(long)


def test_waiters_get_the_freed_slot_by_priority_then_in_order_of_arrival(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="ordered", max_concurrency=1))
    long = _hold_the_only_slot(svc, agent.id)
    waiters = {
        name: svc.create_execution(
            ExecutionCreate(
                agent_id=agent.id,
                parameters={"input": name, "simulate": {"latency_ms": 100}},
                priority=priority,
            )
        )[0].id
        for name, priority in (("low", 1), ("mid-first", 5), ("mid-second", 5), ("high", 9))
    }
    wait_for(
        lambda: all(svc.get_execution(i).waiting_reason == "concurrency_limit" for i in waiters.values()),
        what="all four to wait",
    )
    svc.cancel_execution(long)
    rows = wait_for(lambda: _all_finished(svc, list(waiters.values())), timeout=30, what="the four to run")
    assert rows == ["COMPLETED"] * 4
    started = sorted(waiters, key=lambda name: svc.get_execution(waiters[name]).started_at)
    assert started == ["high", "mid-first", "mid-second", "low"]
