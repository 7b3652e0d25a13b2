"""API keys, tenant isolation and hardening, on the real app, database, Redis and worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from app.config import Settings
from tests.conftest import wait_for


def _app(settings: Settings, session_factory: Any, **changes: Any):  # type: ignore[no-untyped-def]
    from api import create_app

    conf = Settings(**(settings.model_dump() | {"auth_enabled": True, "rate_limit": 0} | changes))
    app = create_app(settings=conf, session_factory=session_factory)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def auth_app(settings, session_factory, celery_worker, clean_db):  # type: ignore[no-untyped-def]
    app = _app(settings, session_factory)
    yield app
    app.extensions["agentexec.service"].control_hub.stop()


def _key(app, tenant: str) -> tuple[str, Any]:  # type: ignore[no-untyped-def]
    return app.extensions["agentexec.keys"].create(tenant, "test")


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def tenants(auth_app):  # type: ignore[no-untyped-def]
    """Two tenants, each with an agent, a PENDING execution and a finished one."""
    client = auth_app.test_client()
    out = {}
    for name in ("acme", "globex"):
        key, _ = _key(auth_app, name)
        agent = client.post("/v1/agents", json={"name": "shared-name"}, headers=_h(key)).get_json()
        pending = client.post(
            "/v1/executions",
            headers=_h(key) | {"Idempotency-Key": "same-key"},
            json={"agent_id": agent["id"], "parameters": {"input": "x"}, "start": False},
        )
        assert pending.status_code == 201, pending.get_json()
        done = client.post(
            "/v1/executions", headers=_h(key), json={"agent_id": agent["id"], "parameters": {"input": "y"}}
        ).get_json()
        wait_for(
            lambda d=done, k=key: (
                client.get(f"/v1/executions/{d['id']}", headers=_h(k)).get_json()["state"] == "COMPLETED"
            ),
            what="the finished execution",
        )
        out[name] = {"key": key, "agent": agent, "pending": pending.get_json(), "done": done}
    return client, out


def test_another_tenants_resources_are_404_on_every_route_and_change_nothing(tenants):  # type: ignore[no-untyped-def]
    client, t = tenants
    mine, theirs = t["acme"], t["globex"]
    agent, pending, done = theirs["agent"]["id"], theirs["pending"]["id"], theirs["done"]["id"]
    calls = [
        ("get", f"/v1/agents/{agent}", None),
        ("patch", f"/v1/agents/{agent}", {"model": "stolen"}),
        ("delete", f"/v1/agents/{agent}", None),
        ("get", f"/v1/executions/{pending}", None),
        ("delete", f"/v1/executions/{done}", None),
        ("get", f"/v1/executions/{done}/history", None),
        ("get", f"/v1/executions/{done}/events", None),
        *(
            ("post", f"/v1/executions/{pending}/{action}", {"reason": "x"})
            for action in ("start", "cancel", "pause", "resume", "retry")
        ),
        ("post", f"/v1/executions/{done}/retry", None),
    ]
    for method, path, body in calls:
        resp = getattr(client, method)(path, json=body, headers=_h(mine["key"]))
        assert resp.status_code == 404, (method, path, resp.get_json())
        assert resp.mimetype == "application/problem+json"
        unknown = (
            path.replace(agent, str(uuid.uuid4()))
            .replace(pending, str(uuid.uuid4()))
            .replace(done, str(uuid.uuid4()))
        )
        same = getattr(client, method)(unknown, json=body, headers=_h(mine["key"]))
        assert same.status_code == 404 and same.get_json()["title"] == resp.get_json()["title"]
    stream = client.get(
        f"/v1/executions/{done}/events", headers=_h(mine["key"]) | {"Accept": "text/event-stream"}
    )
    assert stream.status_code == 404
    foreign_agent = client.post(
        "/v1/executions", headers=_h(mine["key"]), json={"agent_id": agent, "parameters": {"input": "x"}}
    )
    random_agent = client.post(
        "/v1/executions",
        headers=_h(mine["key"]),
        json={"agent_id": str(uuid.uuid4()), "parameters": {"input": "x"}},
    )
    assert foreign_agent.status_code == random_agent.status_code == 422
    owner = _h(theirs["key"])
    assert client.get(f"/v1/agents/{agent}", headers=owner).get_json()["model"] == theirs["agent"]["model"]
    assert client.get(f"/v1/executions/{pending}", headers=owner).get_json()["state"] == "PENDING"
    assert client.get(f"/v1/executions/{done}", headers=owner).get_json()["state"] == "COMPLETED"


def test_lists_and_totals_show_only_the_callers_own(tenants):  # type: ignore[no-untyped-def]
    client, t = tenants
    for name, data in t.items():
        execs = client.get("/v1/executions", headers=_h(data["key"])).get_json()
        assert execs["total"] == 2
        assert {e["id"] for e in execs["items"]} == {data["pending"]["id"], data["done"]["id"]}
        agents = client.get("/v1/agents", headers=_h(data["key"])).get_json()
        assert agents["total"] == 1 and agents["items"][0]["id"] == data["agent"]["id"], name


def test_agent_names_and_idempotency_keys_are_per_tenant(tenants):  # type: ignore[no-untyped-def]
    client, t = tenants
    assert t["acme"]["agent"]["name"] == t["globex"]["agent"]["name"] == "shared-name"
    assert t["acme"]["pending"]["id"] != t["globex"]["pending"]["id"]
    again = client.post("/v1/agents", json={"name": "shared-name"}, headers=_h(t["acme"]["key"]))
    assert again.status_code == 409


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer a b",
        "bearer",
        "Bearer agx_unknown",
        "Bearer not-even-a-key",
    ],
)
def test_missing_malformed_and_unknown_keys_get_401_with_a_challenge(auth_app, header):  # type: ignore[no-untyped-def]
    headers = {} if header is None else {"Authorization": header}
    for method, path in (("get", "/v1/executions"), ("post", "/v1/agents"), ("get", "/v1/nope")):
        resp = getattr(auth_app.test_client(), method)(path, headers=headers, json={"name": "x"})
        assert resp.status_code == 401, (header, path)
        assert resp.mimetype == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="agentexec"')
        assert resp.get_json()["status"] == 401


def test_a_revoked_key_gets_401(auth_app):  # type: ignore[no-untyped-def]
    key, row = _key(auth_app, "acme")
    client = auth_app.test_client()
    assert client.get("/v1/agents", headers=_h(key)).status_code == 200
    assert auth_app.extensions["agentexec.keys"].revoke(row.id)
    resp = client.get("/v1/agents", headers=_h(key))
    assert resp.status_code == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_operations_routes_stay_open_and_metrics_needs_a_key_off_loopback(auth_app):  # type: ignore[no-untyped-def]
    client = auth_app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code in (301, 302)
    assert client.get("/metrics").status_code == 200
    remote = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/metrics", environ_base=remote).status_code == 401
    key, _ = _key(auth_app, "ops")
    assert client.get("/metrics", environ_base=remote, headers=_h(key)).status_code == 200


def test_the_rate_limit_answers_429_with_retry_after_and_recovers(settings, session_factory, clean_db):  # type: ignore[no-untyped-def]
    window = 2
    app = _app(settings, session_factory, rate_limit=3, rate_limit_window=window)
    key, _ = _key(app, "busy")
    client = app.test_client()
    current = lambda: int(time.time() // window)  # noqa: E731
    wait_for(lambda: time.time() % window < window / 2, timeout=window + 1, what="the start of a window")
    start = current()
    answers = [client.get("/v1/agents", headers=_h(key)) for _ in range(4)]
    assert current() == start, "the four requests straddled a window; the machine is far too slow"
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert limited.mimetype == "application/problem+json"
    assert 1 <= int(limited.headers["Retry-After"]) <= window + 1
    assert answers[0].headers["X-RateLimit-Limit"] == "3"
    # A sliding window: the requests age out `window` s after they were made (Retry-After says when).
    wait_for(
        lambda: client.get("/v1/agents", headers=_h(key)).status_code == 200,
        timeout=window + 1,
        interval=0.2,
        what="the oldest request to age out",
    )
    app.extensions["agentexec.service"].control_hub.stop()


def test_every_response_carries_security_headers_and_cors_is_off_by_default(auth_app):  # type: ignore[no-untyped-def]
    client = auth_app.test_client()
    key, _ = _key(auth_app, "acme")
    for resp in (
        client.get("/healthz"),
        client.get("/v1/agents", headers=_h(key)),
        client.get("/v1/agents"),
        client.get("/v1/agents", headers=_h(key) | {"Origin": "https://evil.example"}),
    ):
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert "Access-Control-Allow-Origin" not in resp.headers


def test_cors_answers_only_configured_origins(settings, session_factory, clean_db):  # type: ignore[no-untyped-def]
    app = _app(settings, session_factory, cors_origins="https://console.example")
    key, _ = _key(app, "acme")
    client = app.test_client()
    ok = client.get("/v1/agents", headers=_h(key) | {"Origin": "https://console.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://console.example"
    other = client.get("/v1/agents", headers=_h(key) | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    app.extensions["agentexec.service"].control_hub.stop()


def test_schemathesis_with_a_valid_key_finds_no_server_error(auth_app):  # type: ignore[no-untyped-def]
    key, _ = _key(auth_app, "fuzz")
    doc = auth_app.test_client().get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    schema = schemathesis.openapi.from_wsgi("/openapi.json", auth_app)
    for result in schema.get_all_operations():
        operation = result.ok()

        @hsettings(
            max_examples=8,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case):  # type: ignore[no-untyped-def]
            case.headers = {**(case.headers or {}), **_h(key)}
            if case.path.endswith("/events"):
                case.headers["Accept"] = "application/json"
            if case.operation.label == "POST /v1/executions" and isinstance(case.body, dict):
                case.body = {**case.body, "start": False}
            response = case.call()
            assert response.status_code != 401, (case.operation.label, response.text)
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance, status_code_conformance]
            )

        try:
            check()
        except Exception as exc:
            raise AssertionError(f"{operation.label}: {exc}") from exc


def test_metrics_behind_a_proxy_on_the_same_host_is_not_open_to_the_proxys_clients(  # type: ignore[no-untyped-def]
    settings, session_factory, clean_db
):
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    app = _app(settings, session_factory)
    client = app.test_client()
    assert client.get("/metrics").status_code == 200  # a local client
    assert client.get("/metrics", headers=forwarded).status_code == 401  # forwarded by an untrusted peer
    app.extensions["agentexec.service"].control_hub.stop()
    app = _app(settings, session_factory, trusted_proxies="127.0.0.1")
    client = app.test_client()
    assert client.get("/metrics", headers=forwarded).status_code == 401  # the proxy's client is remote
    assert client.get("/metrics", headers={"X-Forwarded-For": "::1"}).status_code == 200
    app.extensions["agentexec.service"].control_hub.stop()


def test_a_metrics_token_is_needed_from_everywhere_once_set(settings, session_factory, clean_db):  # type: ignore[no-untyped-def]
    app = _app(settings, session_factory, metrics_token="s3cret-metrics")
    client = app.test_client()
    assert client.get("/metrics").status_code == 401  # loopback too
    assert client.get("/metrics", headers=_h("wrong")).status_code == 401
    assert client.get("/metrics", headers=_h("s3cret-metrics")).status_code == 200
    remote = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/metrics", environ_base=remote, headers=_h("s3cret-metrics")).status_code == 200
    app.extensions["agentexec.service"].control_hub.stop()


def test_requests_let_through_while_the_rate_limiter_is_down_are_counted(settings, session_factory, clean_db):  # type: ignore[no-untyped-def]
    app = _app(settings, session_factory, rate_limit=5, redis_url="redis://127.0.0.1:1/0")
    key, _ = _key(app, "outage")
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v1/agents", headers=_h(key)).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("agentexec_rate_limit_failed_open_total"))
    assert float(line.split()[-1]) >= 3
    app.extensions["agentexec.service"].control_hub.stop()
