"""/v1/executions through the real app and a real worker: create, list, read, delete, control, history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import wait_for
from tests.integration.conftest import wait_finished

PROBLEM = "application/problem+json"
EXECUTION_FIELDS = {
    "id",
    "scheduled_at",
    "agent_id",
    "task_id",
    "parameters",
    "state",
    "progress",
    "context",
    "result",
    "error_message",
    "error_code",
    "waiting_reason",
    "max_tokens",
    "usage",
    "attempt",
    "celery_task_id",
    "max_retries",
    "timeout_seconds",
    "queue",
    "priority",
    "metadata",
    "created_at",
    "updated_at",
    "queued_at",
    "started_at",
    "completed_at",
    "required_action",
}


def _create(api, agent_id: str, **fields: Any) -> Any:  # type: ignore[no-untyped-def]
    body = {"agent_id": agent_id, "parameters": {"input": "hello world"}} | fields
    return api.post("/v1/executions", json=body)


def _state(api, execution_id: str) -> str:  # type: ignore[no-untyped-def]
    return str(api.get(f"/v1/executions/{execution_id}").get_json()["state"])


def _history(api, execution_id: str, limit: int = 100) -> list[tuple[str | None, str]]:
    items = api.get(f"/v1/executions/{execution_id}/history?limit={limit}").get_json()["items"]
    return [(h["from_state"], h["to_state"]) for h in items]


def _slow_pipeline(steps: int = 3, latency_ms: int = 400) -> dict[str, Any]:
    return {
        "type": "pipeline",
        "input": "text",
        "steps": [{"name": f"s{i}", "prompt": f"step {i}: {{input}}"} for i in range(steps)],
        "simulate": {"latency_ms": latency_ms, "chunks": 20},
    }


def test_a_submitted_execution_runs_to_completion_and_reads_back_with_every_field(api, api_agent):
    task_id = str(uuid.uuid4())
    resp = _create(api, api_agent["id"], task_id=task_id, priority=7, metadata={"team": "docs"})
    assert resp.status_code == 201 and resp.headers["Location"].endswith(resp.get_json()["id"])
    created = resp.get_json()
    assert set(created) == EXECUTION_FIELDS
    assert created["state"] == "QUEUED" and created["attempt"] == 1 and created["queued_at"]
    assert created["task_id"] == task_id and created["priority"] == 7
    assert created["metadata"] == {"team": "docs"}

    done = wait_finished(api, created["id"])
    assert done["state"] == "COMPLETED" and "hello world" in done["result"]["output"]
    assert done["progress"] == {"percentage": 100.0, "message": "Finalize"}
    assert done["started_at"] and done["completed_at"] and done["error_message"] is None
    assert _history(api, created["id"]) == [
        (None, "PENDING"),
        ("PENDING", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]
    assert _history(api, created["id"], limit=2) == [("QUEUED", "RUNNING"), ("RUNNING", "COMPLETED")]
    history = api.get(f"/v1/executions/{created['id']}/history").get_json()["items"]
    assert set(history[0]) == {"from_state", "to_state", "reason", "created_at"}


def test_start_false_leaves_it_pending_until_start_which_works_once(api, api_agent):
    pending = _create(api, api_agent["id"], start=False).get_json()
    assert pending["state"] == "PENDING" and pending["attempt"] == 0
    started = api.post(f"/v1/executions/{pending['id']}/start", json={"reason": "go"})
    assert started.status_code == 200 and started.get_json()["state"] == "QUEUED"
    assert wait_finished(api, pending["id"])["state"] == "COMPLETED"
    again = api.post(f"/v1/executions/{pending['id']}/start")
    assert again.status_code == 409 and again.content_type == PROBLEM
    reasons = api.get(f"/v1/executions/{pending['id']}/history").get_json()["items"]
    assert reasons[1]["reason"] == "go"


def test_a_repeated_idempotency_key_returns_the_first_execution_and_another_body_conflicts(api, api_agent):
    headers = {"Idempotency-Key": "order-42"}
    first = api.post(
        "/v1/executions", json={"agent_id": api_agent["id"], "parameters": {"input": "a"}}, headers=headers
    )
    # The same body with its keys in another order is the same request.
    repeat = api.post(
        "/v1/executions", json={"parameters": {"input": "a"}, "agent_id": api_agent["id"]}, headers=headers
    )
    other = api.post(
        "/v1/executions", json={"agent_id": api_agent["id"], "parameters": {"input": "b"}}, headers=headers
    )
    assert first.status_code == 201 and repeat.status_code == 200
    assert repeat.get_json()["id"] == first.get_json()["id"]
    assert other.status_code == 409 and other.content_type == PROBLEM
    assert api.get("/v1/executions").get_json()["total"] == 1
    too_long = api.post(
        "/v1/executions",
        json={"agent_id": api_agent["id"], "parameters": {}},
        headers={"Idempotency-Key": "k" * 256},
    )
    assert too_long.status_code == 422 and too_long.get_json()["errors"][0]["loc"][0] == "header"


def test_an_unknown_agent_or_bad_parameters_are_422(api, api_agent):  # type: ignore[no-untyped-def]
    unknown = _create(api, str(uuid.uuid4()))
    assert unknown.status_code == 422 and unknown.content_type == PROBLEM
    assert "agent" in unknown.get_json()["detail"]
    steps = [{"name": f"s{i}", "prompt": "p"} for i in range(51)]
    for parameters in [
        {"type": "batch"},
        {"type": "pipeline"},
        {"type": "pipeline", "steps": []},
        {"type": "pipeline", "steps": steps},
        {"type": "pipeline", "steps": [{"name": "a", "prompt": "x"}] * 2},
        {"type": "standard", "steps": [{"name": "a", "prompt": "x"}]},
        {"simulate": {"latency_ms": -1}},
        "not an object",
    ]:
        resp = _create(api, api_agent["id"], parameters=parameters)
        assert resp.status_code == 422 and resp.content_type == PROBLEM, parameters
        assert resp.get_json()["errors"][0]["loc"][:2] == ["body", "parameters"], resp.get_json()
    for fields in [
        {"priority": 10},
        {"timeout_seconds": 0},
        {"max_retries": -1},
        {"queue": "no spaces"},
        {"task_id": "nope"},
        {"start": "maybe"},
    ]:
        resp = _create(api, api_agent["id"], **fields)
        assert resp.status_code == 422, fields
    assert api.get("/v1/executions").get_json()["total"] == 0


def test_the_list_filters_by_every_field_pages_newest_first_and_refuses_unknown_filters(api, api_agent):
    other_agent = api.post("/v1/agents", json={"name": "other"}).get_json()
    task_id = str(uuid.uuid4())
    ids = [_create(api, api_agent["id"], start=False).get_json()["id"] for _ in range(3)]
    cancelled = _create(api, other_agent["id"], start=False, task_id=task_id).get_json()["id"]
    api.post(f"/v1/executions/{cancelled}/cancel")

    def listed(query: str) -> list[str]:
        resp = api.get(f"/v1/executions?{query}")
        assert resp.status_code == 200, resp.get_json()
        return [e["id"] for e in resp.get_json()["items"]]

    assert listed("") == [cancelled, *reversed(ids)]
    assert listed("state=PENDING") == list(reversed(ids))
    assert listed("state=PENDING&state=CANCELLED") == [cancelled, *reversed(ids)]
    assert listed("state=RUNNING") == []
    assert listed(f"agent_id={other_agent['id']}") == [cancelled]
    assert listed(f"task_id={task_id}") == [cancelled]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+", "%2B")
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+", "%2B")
    assert listed(f"created_after={future}") == []
    assert len(listed(f"created_after={past}&created_before={future}")) == 4
    page = api.get("/v1/executions?page=2&page_size=3").get_json()
    assert page["total"] == 4 and page["page"] == 2 and page["page_size"] == 3 and len(page["items"]) == 1
    for query in [
        "state=DONE",
        "state=",
        "colour=red",
        "page_size=201",
        "page=0",
        "agent_id=42",
        "created_after=yesterday",
    ]:
        resp = api.get(f"/v1/executions?{query}")
        assert resp.status_code == 422 and resp.content_type == PROBLEM, query
        assert resp.get_json()["errors"][0]["loc"][0] == "query"


def test_reading_an_unknown_or_malformed_execution_id_is_a_problem(api):  # type: ignore[no-untyped-def]
    missing = api.get(f"/v1/executions/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.content_type == PROBLEM
    for path in ["/v1/executions/not-a-uuid", "/v1/executions/1234/history", "/v1/executions/x/cancel"]:
        resp = api.get(path) if not path.endswith("cancel") else api.post(path)
        assert resp.status_code == 422 and resp.content_type == PROBLEM, path
    assert api.get(f"/v1/executions/{uuid.uuid4()}/history").status_code == 404
    assert api.get(f"/v1/executions/{uuid.uuid4()}/events").status_code == 404
    for action in ["start", "cancel", "pause", "resume", "retry"]:
        assert api.post(f"/v1/executions/{uuid.uuid4()}/{action}").status_code == 404


def test_only_a_finished_execution_can_be_deleted(api, api_agent):  # type: ignore[no-untyped-def]
    active = _create(api, api_agent["id"], start=False).get_json()
    refused = api.delete(f"/v1/executions/{active['id']}")
    assert refused.status_code == 409 and refused.content_type == PROBLEM
    assert "PENDING" in refused.get_json()["detail"]
    api.post(f"/v1/executions/{active['id']}/cancel")
    assert api.delete(f"/v1/executions/{active['id']}").status_code == 204
    assert api.get(f"/v1/executions/{active['id']}").status_code == 404
    assert api.delete(f"/v1/executions/{active['id']}").status_code == 404


def test_cancel_answers_200_when_not_running_and_202_while_a_worker_stops_it(api, api_agent):
    pending = _create(api, api_agent["id"], start=False).get_json()
    resp = api.post(f"/v1/executions/{pending['id']}/cancel", json={"reason": "changed my mind"})
    assert resp.status_code == 200 and resp.get_json()["state"] == "CANCELLED"

    slow = {"input": "x", "simulate": {"latency_ms": 20_000}}
    running = _create(api, api_agent["id"], parameters=slow).get_json()
    wait_for(lambda: _state(api, running["id"]) == "RUNNING", what="the worker to claim it")
    resp = api.post(f"/v1/executions/{running['id']}/cancel")
    assert resp.status_code == 202 and resp.get_json()["state"] == "CANCELLING"
    assert wait_finished(api, running["id"], timeout=10)["state"] == "CANCELLED"
    assert _history(api, running["id"])[-2:] == [("RUNNING", "CANCELLING"), ("CANCELLING", "CANCELLED")]
    again = api.post(f"/v1/executions/{running['id']}/cancel")
    assert again.status_code == 409 and again.content_type == PROBLEM


def test_pause_answers_202_then_resume_continues_after_the_last_finished_step(api, api_agent):
    # Four 500 ms steps: the pause lands long before the last step starts (a pause during the
    # last step would let the run complete instead).
    created = _create(api, api_agent["id"], parameters=_slow_pipeline(steps=4, latency_ms=500)).get_json()
    refused = api.post(f"/v1/executions/{created['id']}/resume")
    assert refused.status_code == 409
    wait_for(lambda: _state(api, created["id"]) == "RUNNING", what="the worker to claim it")
    paused = api.post(f"/v1/executions/{created['id']}/pause", json={"reason": "lunch"})
    assert paused.status_code == 202 and paused.get_json()["state"] == "PAUSING"
    wait_for(lambda: _state(api, created["id"]) == "PAUSED", what="the worker to pause at a step boundary")
    assert api.post(f"/v1/executions/{created['id']}/pause").status_code == 409
    resumed = api.post(f"/v1/executions/{created['id']}/resume")
    assert resumed.status_code == 200 and resumed.get_json()["state"] == "QUEUED"
    assert resumed.get_json()["attempt"] == 2
    done = wait_finished(api, created["id"])
    assert done["state"] == "COMPLETED" and set(done["result"]["steps"]) == {"s0", "s1", "s2", "s3"}
    assert ("PAUSED", "QUEUED") in _history(api, created["id"])


def test_progress_never_goes_back_across_pause_and_resume(api, api_agent):
    """Issue 19 item 9: a pipeline paused at 33% showed 16.7% "Prepare input" after resume."""
    created = _create(api, api_agent["id"], parameters=_slow_pipeline(steps=4, latency_ms=400)).get_json()
    eid = created["id"]
    wait_for(
        lambda: api.get(f"/v1/executions/{eid}").get_json()["progress"]["percentage"] >= 50,
        what="the run to reach its second step",
    )
    api.post(f"/v1/executions/{eid}/pause")
    wait_for(lambda: _state(api, eid) == "PAUSED", what="the worker to pause at a step boundary")
    paused_at = api.get(f"/v1/executions/{eid}").get_json()["progress"]["percentage"]
    assert paused_at >= 50
    resumed = api.post(f"/v1/executions/{eid}/resume").get_json()
    assert resumed["state"] == "QUEUED" and resumed["progress"]["percentage"] == paused_at
    assert wait_finished(api, eid)["state"] == "COMPLETED"

    events = api.get(f"/v1/executions/{eid}/events?limit=1000").get_json()["items"]
    progress = [e["payload"]["percentage"] for e in events if e["type"] == "agent.execution.progress"]
    assert progress == sorted(progress) and progress[-1] == 100
    after_resume = [
        e["payload"]["percentage"]
        for e in events[next(i for i, e in enumerate(events) if e["payload"].get("new_state") == "PAUSED") :]
        if e["type"] == "agent.execution.progress"
    ]
    assert after_resume and min(after_resume) >= paused_at


def test_retry_requeues_a_failed_execution_with_a_new_attempt_and_refuses_a_completed_one(api, api_agent):
    failing = _create(api, api_agent["id"], parameters={"input": "x", "simulate": {"fail_permanently": True}})
    failed = wait_finished(api, failing.get_json()["id"])
    assert failed["state"] == "FAILED" and "permanent" in failed["error_message"]
    retried = api.post(f"/v1/executions/{failed['id']}/retry", json={})
    assert retried.status_code == 200 and retried.get_json()["state"] == "QUEUED"
    assert retried.get_json()["attempt"] == 2 and retried.get_json()["error_message"] is None
    assert wait_finished(api, failed["id"])["attempt"] == 2

    ok = wait_finished(api, _create(api, api_agent["id"]).get_json()["id"])
    refused = api.post(f"/v1/executions/{ok['id']}/retry")
    assert refused.status_code == 409 and "COMPLETED" in refused.get_json()["detail"]


def test_control_bodies_must_be_a_json_object_with_only_a_reason(api, api_agent):
    pending = _create(api, api_agent["id"], start=False).get_json()
    url = f"/v1/executions/{pending['id']}/cancel"
    assert api.post(url, json=["no"]).status_code == 422
    assert api.post(url, json={"reason": 5}).status_code == 422
    assert api.post(url, json={"why": "x"}).status_code == 422
    assert api.post(url, data="reason=x", content_type="text/plain").status_code == 415
    assert api.post(url, data="{", content_type="application/json").status_code == 400
    assert _state(api, pending["id"]) == "PENDING"
    assert api.post(url, data="", content_type="application/json").status_code == 200


def test_the_events_route_answers_json_after_an_id_with_a_limit(api, api_agent):
    created = _create(api, api_agent["id"]).get_json()
    wait_finished(api, created["id"])
    events = api.get(f"/v1/executions/{created['id']}/events?limit=1000").get_json()["items"]
    assert events[0]["type"] == "agent.execution.state_changed"
    assert events[0]["payload"]["new_state"] == "PENDING"
    assert events[-1]["type"] == "agent.execution.completed"
    assert events[-1]["payload"]["state"] == "COMPLETED"
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    assert set(events[0]) == {"id", "type", "execution_id", "created_at", "payload"}
    later = api.get(f"/v1/executions/{created['id']}/events?after={ids[1]}&limit=2").get_json()["items"]
    assert [e["id"] for e in later] == ids[2:4]
    assert api.get(f"/v1/executions/{created['id']}/events?after=-1").status_code == 422
