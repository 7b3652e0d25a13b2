"""Agents that call tools (#14), through the API with the real worker, PostgreSQL and Redis:
a client tool's wait (REQUIRES_ACTION) holds no slot and goes on after POST .../input; http
tools are called signed, retried with the same Idempotency-Key; every refusal is problem+json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.conftest import wait_for
from tests.integration.conftest import wait_finished
from tests.tool_server import ToolServer

LOOKUP = {
    "name": "lookup",
    "description": "Look a word up",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    "kind": "client",
}


def _agent(api: Any, **fields: Any) -> dict[str, Any]:
    resp = api.post("/v1/agents", json={"name": "tool user", "tools": [LOOKUP]} | fields)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _agent_task(api: Any, agent_id: str, turns: list[list[dict[str, Any]]], **fields: Any) -> dict[str, Any]:
    body = {
        "agent_id": agent_id,
        "parameters": {"type": "agent", "input": "What is x?", "simulate": {"tool_calls": turns}},
    } | fields
    resp = api.post("/v1/executions", json=body)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _wait_state(api: Any, execution_id: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = api.get(f"/v1/executions/{execution_id}").get_json()
        return body if body["state"] == state else None

    return wait_for(reached, timeout=timeout, what=f"execution {execution_id} to be {state}")


ASK_LOOKUP = [[{"name": "lookup", "arguments": {"q": "x"}}]]


def test_a_client_tool_waits_holding_no_slot_and_the_answer_carries_its_output(api):  # type: ignore[no-untyped-def]
    agent = _agent(api, max_concurrency=1)
    waiting = _agent_task(api, agent["id"], ASK_LOOKUP)
    row = _wait_state(api, waiting["id"], "REQUIRES_ACTION")
    action = row["required_action"]
    assert action["type"] == "submit_tool_outputs"
    assert action["tool_calls"] == [{"id": "call_1_0", "name": "lookup", "arguments": {"q": "x"}}]
    assert action["expires_at"] and row["progress"]["message"] == "Waiting for tool outputs"

    # The wait holds no slot: another execution of the agent (max_concurrency 1) runs meanwhile.
    other = api.post("/v1/executions", json={"agent_id": agent["id"], "parameters": {"input": "hi"}})
    assert wait_finished(api, other.get_json()["id"])["state"] == "COMPLETED"
    assert api.get(f"/v1/executions/{waiting['id']}").get_json()["state"] == "REQUIRES_ACTION"

    events = api.get(f"/v1/executions/{waiting['id']}/events").get_json()["items"]
    asked = [e for e in events if e["type"] == "agent.execution.requires_action"]
    assert len(asked) == 1
    payload = asked[0]["payload"]
    expires = payload["required_action"].pop("expires_at")
    assert datetime.fromisoformat(expires) == datetime.fromisoformat(action.pop("expires_at"))
    assert payload == {
        "execution_id": waiting["id"],
        "agent_id": agent["id"],
        "task_id": None,
        "required_action": action,
    }

    body = {"tool_outputs": [{"tool_call_id": "call_1_0", "output": "x is forty-two"}]}
    key = {"Idempotency-Key": "answer-1"}
    answered = api.post(f"/v1/executions/{waiting['id']}/input", json=body, headers=key)
    assert answered.status_code == 200, answered.get_json()
    assert answered.get_json()["state"] == "QUEUED" and answered.get_json()["attempt"] == 2
    assert answered.get_json()["required_action"] is None
    again = api.post(f"/v1/executions/{waiting['id']}/input", json=body, headers=key)
    assert again.status_code == 200 and again.get_json()["id"] == waiting["id"]

    done = wait_finished(api, waiting["id"])
    assert done["state"] == "COMPLETED", done
    assert "lookup=x is forty-two" in done["result"]["output"]
    assert done["result"]["usage"]["model_calls"] == 2 and done["result"]["turns"] == 2
    assert done["usage"]["total_tokens"] == done["result"]["usage"]["total_tokens"] > 0
    deltas = api.get(
        f"/v1/executions/{waiting['id']}/events?types=agent.execution.output.delta&limit=1000"
    ).get_json()["items"]
    streamed = "".join(d["payload"]["delta"] for d in deltas if d["payload"]["step"] == "turn-2")
    assert streamed == done["result"]["output"]  # the answer streamed as output deltas of its turn
    history = api.get(f"/v1/executions/{waiting['id']}/history").get_json()["items"]
    assert [h["to_state"] for h in history] == [
        "PENDING",
        "QUEUED",
        "RUNNING",
        "REQUIRES_ACTION",
        "QUEUED",
        "RUNNING",
        "COMPLETED",
    ]

    late = api.post(f"/v1/executions/{waiting['id']}/input", json=body)
    assert late.status_code == 409 and late.content_type == "application/problem+json"
    reused = api.post(
        f"/v1/executions/{waiting['id']}/input",
        json={"tool_outputs": [{"tool_call_id": "call_1_0", "output": "other"}]},
        headers=key,
    )
    assert reused.status_code == 409 and reused.content_type == "application/problem+json"


def test_input_must_answer_exactly_the_pending_calls_and_a_cancel_ends_the_wait(api):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    ex = _agent_task(api, agent["id"], [[{"name": "lookup", "arguments": {}}, {"name": "lookup"}]])
    _wait_state(api, ex["id"], "REQUIRES_ACTION")
    url = f"/v1/executions/{ex['id']}/input"
    for outputs in (
        [{"tool_call_id": "call_1_0", "output": "a"}],  # one missing
        [{"tool_call_id": "call_1_0", "output": "a"}, {"tool_call_id": "nope", "output": "b"}],
        [{"tool_call_id": "call_1_0", "output": "a"}, {"tool_call_id": "call_1_0", "output": "b"}],
        [{"tool_call_id": "call_1_0", "output": "a"}, {"tool_call_id": "call_1_1", "output": "b" * 65537}],
    ):
        refused = api.post(url, json={"tool_outputs": outputs})
        assert refused.status_code == 422, refused.get_json()
        assert refused.content_type == "application/problem+json"
    assert api.post(url, json={"tool_outputs": []}).status_code == 422
    assert api.get(f"/v1/executions/{ex['id']}").get_json()["state"] == "REQUIRES_ACTION"

    cancelled = api.post(f"/v1/executions/{ex['id']}/cancel")
    assert cancelled.status_code == 200
    row = cancelled.get_json()
    assert (row["state"], row["error_code"], row["required_action"]) == ("CANCELLED", "cancelled", None)
    assert (
        api.post(url, json={"tool_outputs": [{"tool_call_id": "call_1_0", "output": "a"}]}).status_code == 409
    )


def test_a_wait_past_its_expiry_is_timed_out_by_the_reaper(api, api_app):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    ex = _agent_task(api, agent["id"], ASK_LOOKUP, action_timeout_seconds=1)
    _wait_state(api, ex["id"], "REQUIRES_ACTION")
    svc = api_app.extensions["agentexec.service"]

    def expired() -> dict[str, Any] | None:
        svc.reap()
        body = api.get(f"/v1/executions/{ex['id']}").get_json()
        return body if body["state"] == "TIMED_OUT" else None

    row = wait_for(expired, timeout=10, interval=0.2, what="the reaper to time the wait out")
    assert row["error_code"] == "action_expired" and row["required_action"] is None

    # A retry waits again for the same calls, with a new expiry.
    assert api.post(f"/v1/executions/{ex['id']}/retry").status_code == 200
    again = _wait_state(api, ex["id"], "REQUIRES_ACTION")
    assert again["attempt"] == 2 and [c["id"] for c in again["required_action"]["tool_calls"]] == ["call_1_0"]


def test_past_max_turns_the_execution_fails_with_max_turns_exceeded(api):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    unknown = [{"name": "not_a_tool", "arguments": {}}]  # answered by the worker with an error
    ex = _agent_task(api, agent["id"], [unknown, unknown, unknown], action_timeout_seconds=60)
    api_max = api.post(
        "/v1/executions",
        json={
            "agent_id": agent["id"],
            "parameters": {
                "type": "agent",
                "input": "loop",
                "max_turns": 2,
                "simulate": {"tool_calls": [unknown, unknown, unknown]},
            },
        },
    ).get_json()
    done = wait_finished(api, api_max["id"])
    assert (done["state"], done["error_code"]) == ("FAILED", "max_turns_exceeded"), done
    messages = done["context"]["agent"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert "no tool named 'not_a_tool'" in messages[2]["content"]
    assert wait_finished(api, ex["id"])["state"] == "COMPLETED"  # 3 tool turns fit in the default 8


def test_another_tenants_execution_input_is_404(settings, session_factory, celery_worker, clean_db):  # type: ignore[no-untyped-def]
    from api import create_app

    app = create_app(
        settings=settings.model_copy(update={"auth_enabled": True, "rate_limit": 0}),
        session_factory=session_factory,
    )
    app.config["TESTING"] = True
    try:
        keys = app.extensions["agentexec.keys"]
        acme = {"Authorization": f"Bearer {keys.create('acme', 'test')[0]}"}
        globex = {"Authorization": f"Bearer {keys.create('globex', 'test')[0]}"}
        client = app.test_client()
        agent = client.post("/v1/agents", json={"name": "a", "tools": [LOOKUP]}, headers=acme).get_json()
        ex = client.post(
            "/v1/executions",
            json={
                "agent_id": agent["id"],
                "parameters": {"type": "agent", "input": "x", "simulate": {"tool_calls": ASK_LOOKUP}},
            },
            headers=acme,
        ).get_json()
        wait_for(
            lambda: (
                client.get(f"/v1/executions/{ex['id']}", headers=acme).get_json()["state"]
                == "REQUIRES_ACTION"
            ),
            what="the wait",
        )
        body = {"tool_outputs": [{"tool_call_id": "call_1_0", "output": "a"}]}
        other = client.post(f"/v1/executions/{ex['id']}/input", json=body, headers=globex)
        assert other.status_code == 404 and other.content_type == "application/problem+json"
        mine = client.post(f"/v1/executions/{ex['id']}/input", json=body, headers=acme)
        assert mine.status_code == 200 and mine.get_json()["state"] == "QUEUED"
    finally:
        app.extensions["agentexec.service"].control_hub.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/tool",
        "http://localhost:8080/tool",
        "https://example.com/tool",  # public, but not in TOOL_ALLOWED_HOSTS (127.0.0.1 here)
        "ftp://127.0.0.1/tool",
    ],
)
def test_an_http_tool_outside_the_allow_list_is_refused_on_create_and_patch(api, url):  # type: ignore[no-untyped-def]
    tool = LOOKUP | {"kind": "http", "url": url}
    created = api.post("/v1/agents", json={"name": "ssrf", "tools": [tool]})
    assert created.status_code == 422, created.get_json()
    assert created.content_type == "application/problem+json"
    agent = _agent(api)
    patched = api.patch(f"/v1/agents/{agent['id']}", json={"tools": [tool]})
    assert patched.status_code == 422 and patched.content_type == "application/problem+json"
    assert api.get(f"/v1/agents/{agent['id']}").get_json()["tools"] == [LOOKUP | {"url": None}]


@pytest.mark.parametrize(
    "tools",
    [
        [LOOKUP, LOOKUP],  # names must be unique
        [LOOKUP | {"name": "has space"}],
        [LOOKUP | {"parameters": {"type": "string"}}],  # not an object schema
        [LOOKUP | {"url": "http://127.0.0.1/x"}],  # a url only for http tools
        [LOOKUP | {"kind": "http"}],  # and always for them
    ],
)
def test_a_malformed_tool_list_is_refused(api, tools):  # type: ignore[no-untyped-def]
    resp = api.post("/v1/agents", json={"name": "bad", "tools": tools})
    assert resp.status_code == 422 and resp.content_type == "application/problem+json"


@pytest.fixture
def tool_server() -> Iterator[ToolServer]:
    server = ToolServer(fail_first=1)
    yield server
    server.close()


def test_an_http_tool_is_called_signed_and_a_503_is_retried_with_the_same_idempotency_key(api, tool_server):  # type: ignore[no-untyped-def]
    secret = api.post("/v1/tools/secret")
    assert secret.status_code == 201
    signing = secret.get_json()["secret"]
    assert signing.startswith("whsec_")
    rotated = api.post("/v1/tools/secret").get_json()["secret"]  # a second call rotates
    assert rotated != signing
    tool = LOOKUP | {"name": "reverse", "kind": "http", "url": tool_server.url}
    agent = _agent(api, tools=[tool])
    ex = _agent_task(api, agent["id"], [[{"name": "reverse", "arguments": {"q": "olleh"}}]])
    done = wait_finished(api, ex["id"])
    assert done["state"] == "COMPLETED", done
    assert "reverse=hello" in done["result"]["output"]

    assert len(tool_server.requests) == 2  # the 503, then the retry
    (first_headers, first_body), (headers, body) = tool_server.requests
    assert first_headers["idempotency-key"] == headers["idempotency-key"] == f"{ex['id']}:1:call_1_0"
    assert first_body == body
    assert json.loads(body) == {
        "execution_id": ex["id"],
        "tool_call_id": "call_1_0",
        "name": "reverse",
        "arguments": {"q": "olleh"},
    }
    Webhook(rotated).verify(body, headers)  # raises unless signed with the current secret
    with pytest.raises(Exception):  # noqa: B017 - the library's own verification error
        Webhook(signing).verify(body, headers)


def test_the_python_client_makes_a_tool_agent_and_answers_its_calls(api_server, clean_db):  # type: ignore[no-untyped-def]
    from agentexec_client import Client
    from agentexec_client.tools import pending_calls

    with Client(api_server.url) as client:
        agent = client.agents.create("sdk tools", tools=[LOOKUP])
        assert agent.tools == [LOOKUP | {"url": None}]
        execution = client.executions.create(
            agent, {"type": "agent", "input": "x?", "simulate": {"tool_calls": ASK_LOOKUP}}
        )
        waiting = wait_for(
            lambda: (e := client.executions.get(execution)).state == "REQUIRES_ACTION" and e,
            what="the wait for the tool output",
        )
        assert [c["id"] for c in pending_calls(waiting)] == ["call_1_0"]
        assert client.tools.respond(waiting, {"call_1_0": "from the sdk"}).state == "QUEUED"
        done = client.executions.wait(execution, timeout=20)
        assert done.state == "COMPLETED" and "lookup=from the sdk" in (done.output or "")
        assert client.tools.rotate_secret().startswith("whsec_")
        assert client.agents.update(agent, tools=[]).tools == []
