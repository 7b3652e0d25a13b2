"""Flow control through the HTTP API (#15): agent limits and defaults, on_conflict answers,
the daily budget's 429, error_code in answers, events and the list filter, GET /v1/usage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from app.execution.policy import seconds_to_utc_midnight
from app.models import DEFAULT_TENANT
from tests.conftest import wait_for
from tests.integration.conftest import wait_finished

PROBLEM = "application/problem+json"


def _agent(api: Any, **fields: Any) -> dict[str, Any]:
    resp = api.post("/v1/agents", json={"name": f"a-{uuid.uuid4().hex[:8]}"} | fields)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return dict(resp.get_json())


def _create(api: Any, agent_id: str, **fields: Any) -> Any:
    body = {"agent_id": agent_id, "parameters": {"input": "hello world"}} | fields
    return api.post("/v1/executions", json=body)


def test_agents_carry_their_limits_and_defaults_and_patch_null_removes_them(api):  # type: ignore[no-untyped-def]
    agent = _agent(api, max_concurrency=2, on_conflict="reject", daily_token_budget=1000)
    assert (agent["max_concurrency"], agent["on_conflict"], agent["daily_token_budget"]) == (
        2,
        "reject",
        1000,
    )
    changed = api.patch(
        f"/v1/agents/{agent['id']}",
        json={"max_concurrency": None, "on_conflict": None, "daily_token_budget": 5},
    ).get_json()
    assert (changed["max_concurrency"], changed["on_conflict"], changed["daily_token_budget"]) == (
        None,
        None,
        5,
    )
    for bad in ({"max_concurrency": 0}, {"on_conflict": "sometimes"}, {"daily_token_budget": -1}):
        resp = api.post("/v1/agents", json={"name": "bad"} | bad)
        assert resp.status_code == 422 and resp.mimetype == PROBLEM, bad


def test_reject_answers_409_naming_the_active_execution_and_changes_nothing(api):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    task = str(uuid.uuid4())
    first = _create(api, agent["id"], task_id=task, start=False).get_json()
    refused = _create(api, agent["id"], task_id=task, on_conflict="reject")
    assert refused.status_code == 409 and refused.mimetype == PROBLEM
    problem = refused.get_json()
    assert problem["active_execution_id"] == first["id"] and first["id"] in problem["detail"]
    listed = api.get(f"/v1/executions?task_id={task}").get_json()
    assert [e["id"] for e in listed["items"]] == [first["id"]]
    assert _create(api, agent["id"], task_id=task, on_conflict="bogus").status_code == 422


def test_enqueue_shows_task_busy_then_runs_and_interrupt_sets_error_code_interrupted(api):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    task = str(uuid.uuid4())
    slow = {"input": "x", "simulate": {"latency_ms": 20000, "chunks": 200}}
    first = _create(api, agent["id"], task_id=task, parameters=slow).get_json()
    wait_for(lambda: api.get(f"/v1/executions/{first['id']}").get_json()["state"] == "RUNNING", what="run")
    queued = _create(api, agent["id"], task_id=task, on_conflict="enqueue").get_json()
    assert (queued["state"], queued["waiting_reason"]) == ("QUEUED", "task_busy")
    third = _create(api, agent["id"], task_id=task, on_conflict="interrupt").get_json()
    # The interrupt cancels both earlier executions of the task, running and waiting.
    first_done = wait_finished(api, first["id"])
    assert (first_done["state"], first_done["error_code"]) == ("CANCELLED", "interrupted")
    queued_done = wait_finished(api, queued["id"])
    assert (queued_done["state"], queued_done["error_code"]) == ("CANCELLED", "interrupted")
    assert queued_done["waiting_reason"] is None
    assert wait_finished(api, third["id"])["state"] == "COMPLETED"
    listed = api.get(f"/v1/executions?task_id={task}&error_code=interrupted").get_json()
    assert {e["id"] for e in listed["items"]} == {first["id"], queued["id"]}
    events = api.get(f"/v1/executions/{first['id']}/events?limit=1000").get_json()["items"]
    assert events[-1]["type"] == "agent.execution.completed"
    assert events[-1]["payload"]["error_code"] == "interrupted"


def test_a_waiting_execution_shows_concurrency_limit(api):  # type: ignore[no-untyped-def]
    agent = _agent(api, max_concurrency=1)
    slow = {"input": "x", "simulate": {"latency_ms": 20000, "chunks": 200}}
    first = _create(api, agent["id"], parameters=slow).get_json()
    wait_for(lambda: api.get(f"/v1/executions/{first['id']}").get_json()["state"] == "RUNNING", what="run")
    second = _create(api, agent["id"]).get_json()
    waiting = wait_for(
        lambda: (body := api.get(f"/v1/executions/{second['id']}").get_json())["waiting_reason"] and body,
        what="the second to wait",
    )
    assert (waiting["state"], waiting["waiting_reason"]) == ("QUEUED", "concurrency_limit")
    api.post(f"/v1/executions/{first['id']}/cancel")
    assert wait_finished(api, second["id"])["state"] == "COMPLETED"


def test_a_spent_daily_budget_answers_429_with_retry_after_and_usage_adds_up(api):  # type: ignore[no-untyped-def]
    agent = _agent(api, daily_token_budget=8)
    done = wait_finished(api, _create(api, agent["id"], parameters={"input": "a b c d e f"}).get_json()["id"])
    assert done["state"] == "COMPLETED" and done["usage"]["total_tokens"] > 8
    refused = _create(api, agent["id"])
    assert refused.status_code == 429 and refused.mimetype == PROBLEM
    problem = refused.get_json()
    assert problem["type"].endswith("/budget-exceeded") and "daily token budget" in problem["detail"]
    assert abs(int(refused.headers["Retry-After"]) - seconds_to_utc_midnight()) <= 5  # next UTC midnight
    usage = api.get("/v1/usage?group_by=agent").get_json()["items"]
    [mine] = [u for u in usage if u["agent_id"] == agent["id"]]
    assert mine["day"] is None and mine["executions"] == 1
    assert (
        mine["total_tokens"]
        == done["usage"]["total_tokens"]
        == mine["prompt_tokens"] + mine["completion_tokens"]
    )
    by_day = api.get(f"/v1/usage?group_by=day&agent_id={agent['id']}").get_json()["items"]
    assert (
        len(by_day) == 1
        and by_day[0]["agent_id"] is None
        and by_day[0]["total_tokens"] == mine["total_tokens"]
    )
    assert api.get("/v1/usage?group_by=week").status_code == 422
    assert api.get("/v1/usage?created_after=yesterday").status_code == 422


def test_usage_is_the_tenants_own_and_a_window_selects_whole_utc_days(api, session_factory):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=2), today - timedelta(days=1)]
    rows = [  # (agent, day, tenant, executions, prompt, completion, total)
        (agent["id"], days[0], DEFAULT_TENANT, 2, 10, 20, 30),
        (agent["id"], days[1], DEFAULT_TENANT, 1, 1, 2, 3),
        (str(uuid.uuid4()), days[1], "someone-else", 7, 100, 200, 300),  # another tenant's agent
    ]
    with session_factory() as s:
        for a, d, t, n, p, c, total in rows:
            s.execute(
                text(
                    "INSERT INTO agent_usage_daily (agent_id, day, tenant, shard, executions, prompt_tokens,"
                    " completion_tokens, total_tokens) VALUES (:a, :d, :t, 3, :n, :p, :c, :total)"
                ),
                {"a": a, "d": d, "t": t, "n": n, "p": p, "c": c, "total": total},
            )
        s.commit()

    def item(day: Any, executions: int, p: int, c: int) -> dict[str, Any]:
        return {
            "agent_id": None,
            "day": day.isoformat(),
            "executions": executions,
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
        }

    by_day = api.get("/v1/usage?group_by=day").get_json()["items"]
    assert by_day == [item(days[0], 2, 10, 20), item(days[1], 1, 1, 2)]  # not someone-else's 300
    window = f"created_after={days[1]}T23:59:59Z&created_before={today}T00:00:00Z"
    assert api.get(f"/v1/usage?group_by=day&{window}").get_json()["items"] == [item(days[1], 1, 1, 2)]
    [total] = api.get(f"/v1/usage?group_by=agent&agent_id={agent['id']}").get_json()["items"]
    assert (total["executions"], total["total_tokens"], total["day"]) == (3, 33, None)
