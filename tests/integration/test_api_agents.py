"""/v1/agents through the real app: every route's success and each documented error status."""

from __future__ import annotations

import uuid

from tests.integration.conftest import wait_finished

PROBLEM = "application/problem+json"


def test_an_agent_is_created_read_listed_changed_and_deleted(api):  # type: ignore[no-untyped-def]
    created = api.post(
        "/v1/agents",
        json={
            "name": "  summarizer ",
            "model": "simulated-1",
            "system_prompt": "Summarize.",
            "parameters": {"temperature": 0},
        },
    )
    assert created.status_code == 201
    agent = created.get_json()
    assert agent["name"] == "summarizer" and agent["parameters"] == {"temperature": 0}
    assert set(agent) == {
        "id",
        "name",
        "model",
        "system_prompt",
        "parameters",
        "max_concurrency",
        "on_conflict",
        "daily_token_budget",
        "tools",
        "created_at",
        "updated_at",
    }
    assert (agent["max_concurrency"], agent["on_conflict"], agent["daily_token_budget"]) == (None, None, None)
    assert agent["tools"] == []

    assert api.get(f"/v1/agents/{agent['id']}").get_json() == agent
    api.post("/v1/agents", json={"name": "another"})
    page = api.get("/v1/agents?page=1&page_size=1").get_json()
    assert page["total"] == 2 and page["page"] == 1 and page["page_size"] == 1
    assert [a["name"] for a in page["items"]] == ["another"]
    assert [a["name"] for a in api.get("/v1/agents?page=2&page_size=1").get_json()["items"]] == ["summarizer"]

    patched = api.patch(f"/v1/agents/{agent['id']}", json={"system_prompt": "Be terse."})
    assert patched.status_code == 200
    assert patched.get_json()["system_prompt"] == "Be terse." and patched.get_json()["name"] == "summarizer"

    assert api.delete(f"/v1/agents/{agent['id']}").status_code == 204
    gone = api.get(f"/v1/agents/{agent['id']}")
    assert gone.status_code == 404 and gone.content_type == PROBLEM


def test_a_taken_agent_name_is_a_conflict_on_create_and_on_rename(api):  # type: ignore[no-untyped-def]
    api.post("/v1/agents", json={"name": "taken"})
    other = api.post("/v1/agents", json={"name": "free"}).get_json()
    again = api.post("/v1/agents", json={"name": "taken"})
    assert again.status_code == 409 and again.content_type == PROBLEM
    assert "taken" in again.get_json()["detail"]
    rename = api.patch(f"/v1/agents/{other['id']}", json={"name": "taken"})
    assert rename.status_code == 409 and rename.content_type == PROBLEM


def test_invalid_agent_bodies_are_422_listing_the_fields(api):  # type: ignore[no-untyped-def]
    for body, field in [
        ({}, "name"),
        ({"name": "  "}, "name"),
        ({"name": "x", "model": ""}, "model"),
        ({"name": "x", "unknown": 1}, "unknown"),
        ({"name": 5}, "name"),
    ]:
        resp = api.post("/v1/agents", json=body)
        assert resp.status_code == 422 and resp.content_type == PROBLEM, body
        problem = resp.get_json()
        assert problem["status"] == 422 and problem["title"] and problem["type"] and problem["detail"]
        located = [e for e in problem["errors"] if e["loc"][:1] == ["body"]]
        assert any(field in e["loc"] + [e["msg"]] for e in located), problem


def test_unknown_agents_are_404_on_read_change_and_delete(api):  # type: ignore[no-untyped-def]
    missing = uuid.uuid4()
    for resp in (
        api.get(f"/v1/agents/{missing}"),
        api.patch(f"/v1/agents/{missing}", json={"model": "m"}),
        api.delete(f"/v1/agents/{missing}"),
    ):
        assert resp.status_code == 404 and resp.content_type == PROBLEM
        assert str(missing) in resp.get_json()["detail"]


def test_an_agent_with_an_active_execution_cannot_be_deleted_until_it_finishes(api, api_agent):
    slow = {"input": "hi", "simulate": {"latency_ms": 400}}
    execution = api.post("/v1/executions", json={"agent_id": api_agent["id"], "parameters": slow}).get_json()
    refused = api.delete(f"/v1/agents/{api_agent['id']}")
    assert refused.status_code == 409 and refused.content_type == PROBLEM
    wait_finished(api, execution["id"])
    assert api.delete(f"/v1/agents/{api_agent['id']}").status_code == 204
    assert api.get(f"/v1/executions/{execution['id']}").status_code == 404
