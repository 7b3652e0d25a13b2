"""Token budgets and usage (#15) on a real worker: max_tokens stops a pipeline before the step
it cannot pay for, the agent's daily budget fails the next claim and refuses creates, and the
day's usage rollup equals the sum of the executions' own counters."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from app.errors import BudgetExceededError
from app.execution.policy import seconds_to_utc_midnight
from app.schemas import AgentCreate, ExecutionCreate, ToolOutputsSubmit
from tests.conftest import wait_for
from tests.tool_server import LOOKUP

FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
PIPELINE = {
    "type": "pipeline",
    "input": "plan a trip to the sea",
    "steps": [
        {"name": "a", "prompt": "{input} first"},
        {"name": "b", "prompt": "{steps.a} second"},
        {"name": "c", "prompt": "{steps.b} third"},
    ],
}


def _finished(svc: Any, *ids: uuid.UUID) -> list[Any] | None:
    rows = [svc.get_execution(i) for i in ids]
    return rows if all(r.state in FINISHED for r in rows) else None


def test_max_tokens_stops_a_pipeline_before_the_step_that_would_exceed_it(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="frugal"))
    unlimited = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters=PIPELINE))[0]
    [full] = wait_for(lambda: _finished(svc, unlimited.id), what="the unlimited pipeline")
    per_step = {name: cp["usage"]["total_tokens"] for name, cp in full.context["steps"].items()}
    budget = per_step["a"] + per_step["b"]  # room for two steps, not three
    capped = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters=PIPELINE, max_tokens=budget))[
        0
    ]
    [row] = wait_for(lambda: _finished(svc, capped.id), what="the capped pipeline")
    assert (row.state, row.error_code) == ("FAILED", "budget_exceeded")
    assert list(row.context["steps"]) == ["a", "b"] and row.total_tokens == budget
    assert f"max_tokens is {budget}" in row.error_message
    completed = [e.payload for e in svc.get_events(capped.id) if e.type == "agent.execution.completed"]
    assert completed[-1]["error_code"] == "budget_exceeded"


def test_a_spent_daily_budget_refuses_creates_until_the_next_utc_midnight(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="daily", daily_token_budget=8))
    first = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "a b c d e f"}))[0]
    [done] = wait_for(lambda: _finished(svc, first.id), what="the first run")
    assert done.state == "COMPLETED" and done.total_tokens > 8  # its prompt (6) fitted the budget
    with pytest.raises(BudgetExceededError) as refused:
        svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
    assert abs(refused.value.retry_after - seconds_to_utc_midnight()) <= 5  # next UTC midnight


def test_the_days_usage_equals_the_sum_of_the_executions_usage(worker_service, session_factory):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="counted"))
    ids = [
        svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters=p))[0].id
        for p in (PIPELINE, {"input": "hello there"}, {"input": "x", "simulate": {"fail_permanently": True}})
    ]
    rows = wait_for(lambda: _finished(svc, *ids), what="three runs")
    assert [r.state for r in rows] == ["COMPLETED", "COMPLETED", "FAILED"]
    with session_factory() as s:
        day = s.execute(
            text(
                "SELECT sum(executions), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens)"
                " FROM agent_usage_daily WHERE agent_id = :a"
            ),
            {"a": agent.id},
        ).one()
    assert tuple(day) == (
        3,
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
        sum(r.total_tokens for r in rows),
    )
    assert rows[0].total_tokens == rows[0].result["usage"]["total_tokens"]
    assert rows[1].total_tokens == rows[1].result["usage"]["total_tokens"] and rows[2].total_tokens == 0


def test_a_run_queued_before_the_daily_budget_was_spent_fails_at_claim_without_a_model_call(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="late", daily_token_budget=8))
    later = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False))[
        0
    ]
    first = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "a b c d e f"}))[0]
    [done] = wait_for(lambda: _finished(svc, first.id), what="the first run")
    assert done.state == "COMPLETED" and done.total_tokens > 8  # the day's budget is spent now
    svc.start_execution(later.id)  # it was created while the budget had room
    [row] = wait_for(lambda: _finished(svc, later.id), what="the later run's claim")
    assert (row.state, row.error_code, row.total_tokens) == ("FAILED", "budget_exceeded", 0)
    assert "daily token budget" in row.error_message and row.result is None
    assert row.waiting_reason is None


def test_usage_is_recorded_as_each_step_ends_not_only_at_the_end(worker_service, session_factory):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="metered"))
    slow = PIPELINE | {"simulate": {"latency_ms": 3000, "chunks": 30}}  # 3 s per step
    running = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters=slow))[0]
    row = wait_for(
        lambda: "a" in ((r := svc.get_execution(running.id)).context or {}).get("steps", {}) and r,
        timeout=30,
        what="the first step to end",
    )
    step_a = row.context["steps"]["a"]["usage"]["total_tokens"]
    assert row.state == "RUNNING" and row.total_tokens == step_a > 0
    with session_factory() as s:
        day = s.execute(
            text("SELECT sum(executions), sum(total_tokens) FROM agent_usage_daily WHERE agent_id = :a"),
            {"a": agent.id},
        ).one()
    assert tuple(day) == (0, step_a)  # the agent's day has the step's tokens; no run has ended yet
    svc.cancel_execution(running.id)
    [ended] = wait_for(lambda: _finished(svc, running.id), what="the cancel")
    assert ended.state == "CANCELLED" and ended.total_tokens >= step_a


def test_max_tokens_counts_every_turn_and_attempt_of_an_agent(worker_service):  # type: ignore[no-untyped-def]
    """Turn 1 asks for a tool (REQUIRES_ACTION); its answer is a new attempt whose turn 2 finds
    the budget spent by turn 1: no second model call, FAILED budget_exceeded."""
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="chatty", tools=[LOOKUP]))
    task = {"type": "agent", "input": "What is x?", "simulate": {"tool_calls": [[{"name": "lookup"}]]}}

    def asked(max_tokens: int | None) -> Any:
        ex = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters=task, max_tokens=max_tokens))[
            0
        ]
        return wait_for(
            lambda: (r := svc.get_execution(ex.id)).state == "REQUIRES_ACTION" and r, what="the tool call"
        )

    def answer(row: Any) -> Any:
        call = row.required_action["tool_calls"][0]["id"]
        svc.submit_tool_outputs(
            row.id, ToolOutputsSubmit(tool_outputs=[{"tool_call_id": call, "output": "forty-two"}])
        )
        [done] = wait_for(lambda: _finished(svc, row.id), what="the second turn")
        return done

    free = asked(None)
    first_turn = free.total_tokens
    assert first_turn > 0 and answer(free).state == "COMPLETED"  # two turns when nothing limits it
    capped = asked(first_turn)
    assert capped.total_tokens == first_turn
    done = answer(capped)
    assert (done.state, done.error_code, done.attempt) == ("FAILED", "budget_exceeded", 2)
    assert done.total_tokens == first_turn and f"max_tokens is {first_turn}" in done.error_message
