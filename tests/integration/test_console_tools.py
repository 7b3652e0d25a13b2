"""The console's form for an agent waiting for tool outputs (#14): shown on the execution page
while it waits, CSRF-checked, tenant-scoped, and the agent goes on with what was typed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for
from tests.integration.test_console import console_app as console_app  # noqa: F401 - the app fixture
from tests.integration.test_console import csrf_of, signed_in

LOOKUP = {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}


def _waiting(app: Any, tenant: str) -> tuple[str, str, dict[str, str]]:
    """A key of `tenant` and its agent execution waiting for lookup: (key, execution id, headers)."""
    key, _ = app.extensions["agentexec.keys"].create(tenant, "console tools test")
    h = {"Authorization": f"Bearer {key}"}
    api = app.test_client()
    agent = api.post("/v1/agents", json={"name": "tooly", "tools": [LOOKUP]}, headers=h).get_json()
    ex = api.post(
        "/v1/executions",
        headers=h,
        json={
            "agent_id": agent["id"],
            "parameters": {
                "type": "agent",
                "input": "what is x?",
                "simulate": {"tool_calls": [[{"name": "lookup", "arguments": {"q": "x"}}]]},
            },
        },
    ).get_json()
    wait_for(
        lambda: api.get(f"/v1/executions/{ex['id']}", headers=h).get_json()["state"] == "REQUIRES_ACTION",
        what="the wait for the tool output",
    )
    return key, ex["id"], h


@pytest.fixture
def waiting(console_app):  # type: ignore[no-untyped-def]  # noqa: F811
    return _waiting(console_app, "acme")


def test_the_page_of_a_waiting_agent_has_a_field_per_call_and_sending_it_lets_the_agent_go_on(  # type: ignore[no-untyped-def]
    console_app,  # noqa: F811
    waiting,
):
    key, execution_id, h = waiting
    client = signed_in(console_app, key)
    page = client.get(f"/console/executions/{execution_id}").get_data(as_text=True)
    assert 'id="required-action">' in page and 'name="output-call_1_0"' in page  # shown, not hidden
    assert "lookup({&#34;q&#34;: &#34;x&#34;})" in page or 'lookup({"q": "x"})' in page
    assert "Waiting" in page and "tool call" in page

    token = csrf_of(client, f"/console/executions/{execution_id}")
    forged = client.post(f"/console/executions/{execution_id}/input", data={"output-call_1_0": "nope"})
    assert forged.status_code == 400  # no CSRF token
    sent = client.post(
        f"/console/executions/{execution_id}/input",
        data={"csrf_token": token, "output-call_1_0": "typed in the console"},
    )
    assert sent.status_code == 303
    api = console_app.test_client()
    done = wait_for(
        lambda: (
            (e := api.get(f"/v1/executions/{execution_id}", headers=h).get_json())["state"] == "COMPLETED"
            and e
        ),
        what="the agent to finish",
    )
    assert "lookup=typed in the console" in done["result"]["output"]
    again = client.post(
        f"/console/executions/{execution_id}/input",
        data={"csrf_token": token, "output-call_1_0": "late"},
    )
    assert again.status_code == 409
    after = client.get(f"/console/executions/{execution_id}").get_data(as_text=True)
    assert 'id="required-action" hidden' in after and 'name="output-call_1_0"' not in after
    json_again = client.post(
        f"/console/executions/{execution_id}/input",
        data={"csrf_token": token, "output-call_1_0": "late"},
        headers={"Accept": "application/json"},
    )
    assert json_again.status_code == 409 and "waits for no tool outputs" in json_again.get_json()["error"]


def test_another_tenants_waiting_execution_cannot_be_answered_from_the_console(console_app, waiting):  # type: ignore[no-untyped-def]  # noqa: F811
    _, execution_id, h = waiting
    globex, _ = console_app.extensions["agentexec.keys"].create("globex", "other tenant")
    client = signed_in(console_app, globex)
    token = csrf_of(client, "/console/executions")
    refused = client.post(
        f"/console/executions/{execution_id}/input", data={"csrf_token": token, "output-call_1_0": "x"}
    )
    assert refused.status_code == 404
    state = console_app.test_client().get(f"/v1/executions/{execution_id}", headers=h).get_json()["state"]
    assert state == "REQUIRES_ACTION"
