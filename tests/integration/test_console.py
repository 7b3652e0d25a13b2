"""The operator console's routes on the real app, database, Redis and worker: pages, sign-in,
CSRF, tenant scoping, a revoked key, and the console-side SSE route."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.config import Settings
from tests.integration.conftest import wait_finished

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console_app(settings, session_factory, celery_worker, clean_db):  # type: ignore[no-untyped-def]
    from api import create_app

    conf = Settings(**(settings.model_dump() | {"auth_enabled": True, "rate_limit": 0}))
    app = create_app(settings=conf, session_factory=session_factory)
    app.config["TESTING"] = True
    yield app
    app.extensions["agentexec.service"].control_hub.stop()


class Tenant:
    """A tenant with a key, an agent, a finished and a pending execution, made through /v1."""

    def __init__(self, app: Any, name: str):
        self.key, self.row = app.extensions["agentexec.keys"].create(name, "console test")
        api = app.test_client()
        h = {"Authorization": f"Bearer {self.key}"}
        self.agent = api.post("/v1/agents", json={"name": f"{name}-writer"}, headers=h).get_json()
        made = api.post(
            "/v1/executions", headers=h, json={"agent_id": self.agent["id"], "parameters": {"input": "hi"}}
        )
        self.done = made.get_json()["id"]
        pending = api.post(
            "/v1/executions",
            headers=h,
            json={"agent_id": self.agent["id"], "parameters": {"input": "later"}, "start": False},
        )
        self.pending = pending.get_json()["id"]
        wait_finished(_Bearer(app, self.key), self.done)


class _Bearer:
    """A /v1 client with a key, for wait_finished."""

    def __init__(self, app: Any, key: str):
        self.client, self.headers = app.test_client(), {"Authorization": f"Bearer {key}"}

    def get(self, path: str) -> Any:
        return self.client.get(path, headers=self.headers)


def signed_in(app: Any, key: str) -> Any:
    client = app.test_client()
    page = client.get("/console/sign-in")
    token = CSRF.search(page.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    resp = client.post("/console/sign-in", data={"api_key": key, "csrf_token": token})
    assert resp.status_code == 303, resp.get_data(as_text=True)
    return client


def section(html: str, element_id: str) -> str:
    """The markup of the element with this id, up to the end of its section."""
    start = html.index(f'id="{element_id}"')
    return html[start : html.index("</section>", start)]


def visible_actions(html: str) -> list[str]:
    """The control buttons the page shows (the others are rendered hidden for the live page)."""
    forms = re.findall(r'<form[^>]*data-action="(\w+)"[^>]*>', html)
    tags = re.findall(r'<form[^>]*data-action="\w+"[^>]*>', html)
    return [name for name, tag in zip(forms, tags, strict=True) if not re.search(r"\shidden\b", tag)]


def csrf_of(client: Any, path: str) -> str:
    match = CSRF.search(client.get(path).get_data(as_text=True))
    assert match is not None
    return match.group(1)


@pytest.fixture
def acme(console_app) -> Tenant:  # type: ignore[no-untyped-def]
    return Tenant(console_app, "acme")


def test_a_visitor_without_a_session_is_sent_to_the_sign_in_page(console_app):  # type: ignore[no-untyped-def]
    resp = console_app.test_client().get("/console/executions")
    assert resp.status_code == 303
    assert resp.headers["Location"].startswith("/console/sign-in")


def test_signing_in_sets_a_strict_httponly_cookie_holding_the_key_id_not_the_key(console_app, acme):  # type: ignore[no-untyped-def]
    client = console_app.test_client()
    token = csrf_of(client, "/console/sign-in")
    wrong = client.post("/console/sign-in", data={"api_key": "agx_nope", "csrf_token": token})
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.get_data(as_text=True)
    resp = client.post("/console/sign-in", data={"api_key": acme.key, "csrf_token": token})
    assert resp.status_code == 303
    cookie = next(v for v in resp.headers.getlist("Set-Cookie") if v.startswith("agentexec_console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert acme.key not in cookie
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    data = console_app.session_interface.get_signing_serializer(console_app).loads(value)
    assert data["key_id"] == str(acme.row.id) and data["tenant"] == "acme"
    assert acme.key not in str(data)


def test_the_pages_show_executions_their_story_and_agents(console_app, acme):  # type: ignore[no-untyped-def]
    client = signed_in(console_app, acme.key)
    listing = client.get("/console/executions").get_data(as_text=True)
    assert acme.done[:8] in listing and acme.pending[:8] in listing
    assert "COMPLETED" in listing and "acme-writer" in listing and "<progress" in listing
    counts = client.get("/console/executions/counts").get_json()
    assert counts["COMPLETED"] == 1 and counts["PENDING"] == 1
    only_pending = client.get("/console/executions?state=PENDING").get_data(as_text=True)
    assert acme.pending[:8] in only_pending and acme.done[:8] not in only_pending

    done = client.get(f"/console/executions/{acme.done}").get_data(as_text=True)
    row = _Bearer(console_app, acme.key).get(f"/v1/executions/{acme.done}").get_json()
    # The timeline lists the states it went through, in order, the last one final.
    assert re.findall(r'class="state state-(\w+)"', section(done, "timeline")) == [
        "PENDING",
        "QUEUED",
        "RUNNING",
        "COMPLETED",
    ]
    assert '<span class="dur">final</span>' in section(done, "timeline")
    assert "Finished: COMPLETED" in done and row["celery_task_id"] and row["celery_task_id"] in done
    usage = row["usage"]
    assert f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion" in done
    assert row["result"]["output"] in section(done, "output")  # the streamed text, whole
    assert "completed" in section(done, "events") and visible_actions(done) == []
    pipeline = console_app.test_client().post(
        "/v1/executions",
        headers={"Authorization": f"Bearer {acme.key}"},
        json={
            "agent_id": acme.agent["id"],
            "parameters": {
                "type": "pipeline",
                "input": "x",
                "steps": [{"name": "draft", "prompt": "{input}"}],
            },
        },
    )
    wait_finished(_Bearer(console_app, acme.key), pipeline.get_json()["id"])
    steps = client.get(f"/console/executions/{pipeline.get_json()['id']}").get_data(as_text=True)
    assert 'data-step="draft"><h3>draft</h3>' in section(steps, "output")
    waiting = client.get(f"/console/executions/{acme.pending}").get_data(as_text=True)
    assert "not started" in waiting and visible_actions(waiting) == ["cancel"]

    agents = client.get("/console/agents").get_data(as_text=True)
    assert "acme-writer" in agents
    agent = client.get(f"/console/agents/{acme.agent['id']}").get_data(as_text=True)
    assert "Usage, last 14 days" in agent and acme.done in agent


def test_another_tenants_execution_and_agent_are_not_found(console_app, acme):  # type: ignore[no-untyped-def]
    other = Tenant(console_app, "globex")
    client = signed_in(console_app, acme.key)
    assert client.get(f"/console/executions/{other.done}").status_code == 404
    assert client.get(f"/console/executions/{other.done}/events").status_code == 404
    assert client.get(f"/console/agents/{other.agent['id']}").status_code == 404
    assert other.done[:8] not in client.get("/console/executions").get_data(as_text=True)
    token = csrf_of(client, "/console/executions")
    assert (
        client.post(f"/console/executions/{other.pending}/cancel", data={"csrf_token": token}).status_code
        == 404
    )


def test_a_control_form_without_its_csrf_token_is_refused(console_app, acme):  # type: ignore[no-untyped-def]
    client = signed_in(console_app, acme.key)
    refused = client.post(f"/console/executions/{acme.pending}/cancel", data={"csrf_token": "forged"})
    assert refused.status_code == 400 and "CSRF" in refused.get_data(as_text=True)
    assert client.post(f"/console/executions/{acme.pending}/cancel").status_code == 400
    assert "PENDING" in client.get(f"/console/executions/{acme.pending}").get_data(as_text=True)
    assert console_app.test_client().post("/console/sign-in", data={"api_key": acme.key}).status_code == 400


def test_cancel_with_the_token_answers_the_new_state(console_app, acme):  # type: ignore[no-untyped-def]
    client = signed_in(console_app, acme.key)
    token = csrf_of(client, f"/console/executions/{acme.pending}")
    resp = client.post(
        f"/console/executions/{acme.pending}/cancel",
        data={"csrf_token": token},
        headers={"Accept": "application/json"},
    )
    assert resp.status_code == 200 and resp.get_json()["state"] == "CANCELLED"
    again = client.post(f"/console/executions/{acme.pending}/cancel", data={"csrf_token": token})
    assert again.status_code == 409


def test_a_revoked_key_ends_its_session_at_the_next_request(console_app, acme):  # type: ignore[no-untyped-def]
    client = signed_in(console_app, acme.key)
    assert client.get("/console/executions").status_code == 200
    console_app.extensions["agentexec.keys"].revoke(acme.row.id)
    resp = client.get("/console/executions")
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/console/sign-in")


def test_signing_out_ends_the_session(console_app, acme):  # type: ignore[no-untyped-def]
    client = signed_in(console_app, acme.key)
    token = csrf_of(client, "/console/executions")
    assert client.post("/console/sign-out", data={"csrf_token": token}).status_code == 303
    assert client.get("/console/executions").status_code == 303


def test_the_console_event_route_replays_a_finished_execution_and_ends(console_app, acme):  # type: ignore[no-untyped-def]
    client = signed_in(console_app, acme.key)
    resp = client.get(f"/console/executions/{acme.done}/events")
    assert resp.mimetype == "text/event-stream"
    body = resp.get_data(as_text=True)
    assert "event: agent.execution.progress" in body and "event: agent.execution.completed" in body
    assert "event: agent.execution.output.delta" in body  # the page shows the output as it streams
    after = int(re.findall(r"^id: (\d+)$", body, re.M)[-1])
    tail = client.get(f"/console/executions/{acme.done}/events", headers={"Last-Event-ID": str(after)})
    assert "event:" not in tail.get_data(as_text=True)


def test_the_console_has_its_own_csp_and_the_api_keeps_its_own_and_sets_no_cookie(console_app, acme):  # type: ignore[no-untyped-def]
    client = signed_in(console_app, acme.key)
    page = client.get("/console/executions")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "connect-src 'self'" in csp
    assert client.get("/console/static/console.js").status_code == 200
    api = console_app.test_client().get("/v1/executions", headers={"Authorization": f"Bearer {acme.key}"})
    assert api.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert "Set-Cookie" not in api.headers


def test_an_open_event_stream_ends_when_its_key_is_revoked(console_app, acme, monkeypatch):  # type: ignore[no-untyped-def]
    from api.console import session

    monkeypatch.setattr(session, "KEY_CHECK_SECONDS", 0.0)
    console_app.extensions["agentexec.settings"].sse_heartbeat_seconds = 0.1
    client = signed_in(console_app, acme.key)
    resp = client.get(f"/console/executions/{acme.pending}/events", buffered=False)
    frames = resp.iter_encoded()
    assert next(frames)  # the replay or the first heartbeat: the stream is open on a PENDING execution
    console_app.extensions["agentexec.keys"].revoke(acme.row.id)
    rest = list(frames)  # ends (instead of following a PENDING execution forever)
    assert len(rest) < 100
    resp.close()
