"""/v1/webhooks as a client sees it: the secret once, URL checks (SSRF), the per-tenant cap,
tenant isolation, PATCH and DELETE, problem+json for every refusal."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.config import Settings

PUBLIC = "https://93.184.216.34/hook"  # a literal public address: no DNS needed


def _app(settings: Settings, session_factory: Any, **changes: Any):  # type: ignore[no-untyped-def]
    from api import create_app

    app = create_app(settings=settings.model_copy(update=changes), session_factory=session_factory)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def make_app(settings, session_factory, celery_worker, clean_db):  # type: ignore[no-untyped-def]
    apps = []

    def make(**changes: Any):  # type: ignore[no-untyped-def]
        app = _app(settings, session_factory, **changes)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["agentexec.service"].control_hub.stop()


def test_create_shows_the_secret_once_and_get_list_patch_delete_manage_the_endpoint(api):  # type: ignore[no-untyped-def]
    created = api.post("/v1/webhooks", json={"url": PUBLIC, "description": "billing"})
    assert created.status_code == 201, created.get_json()
    hook = created.get_json()
    assert hook["secret"].startswith("whsec_")
    assert hook["events"] == ["agent.execution.completed"]
    assert (hook["enabled"], hook["consecutive_failures"], hook["disabled_reason"]) == (True, 0, None)

    shown = api.get(f"/v1/webhooks/{hook['id']}").get_json()
    assert "secret" not in shown and shown["url"] == PUBLIC
    listing = api.get("/v1/webhooks").get_json()
    assert listing["total"] == 1 and [h["id"] for h in listing["items"]] == [hook["id"]]
    assert "secret" not in listing["items"][0]

    changed = api.patch(
        f"/v1/webhooks/{hook['id']}",
        json={"events": ["agent.execution.progress", "agent.execution.completed"], "enabled": False},
    ).get_json()
    assert changed["events"] == ["agent.execution.progress", "agent.execution.completed"]
    assert changed["enabled"] is False and changed["disabled_reason"] == "disabled by the API"
    assert api.get(f"/v1/webhooks/{hook['id']}/deliveries").get_json() == {
        "items": [],
        "total": 0,
        "page": 1,
        "page_size": 50,
    }
    assert api.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert api.get(f"/v1/webhooks/{hook['id']}").status_code == 404
    assert api.delete(f"/v1/webhooks/{hook['id']}").status_code == 404


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.1/hook", "non-public"),
        ("http://169.254.169.254/latest/meta-data/", "non-public"),
        ("http://[::1]:8080/", "non-public"),
        ("http://localhost:8080/", "localhost"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_private_loopback_link_local_and_unresolvable_urls_are_422(make_app, url, why):  # type: ignore[no-untyped-def]
    api = make_app(webhook_allowed_hosts="").test_client()  # nothing allow-listed
    answer = api.post("/v1/webhooks", json={"url": url})
    assert answer.status_code == 422, answer.get_json()
    assert answer.content_type == "application/problem+json"
    assert why in answer.get_json()["detail"]
    assert api.get("/v1/webhooks").get_json()["total"] == 0
    hook = api.post("/v1/webhooks", json={"url": PUBLIC}).get_json()
    patched = api.patch(f"/v1/webhooks/{hook['id']}", json={"url": url})
    assert patched.status_code == 422 and why in patched.get_json()["detail"]
    assert api.get(f"/v1/webhooks/{hook['id']}").get_json()["url"] == PUBLIC


def test_an_allow_listed_private_host_is_accepted(make_app):  # type: ignore[no-untyped-def]
    api = make_app(webhook_allowed_hosts="10.0.0.0/8, localhost").test_client()
    assert api.post("/v1/webhooks", json={"url": "http://10.1.2.3:8080/in"}).status_code == 201
    assert api.post("/v1/webhooks", json={"url": "http://localhost:9/in"}).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://93.184.216.34/"},
        {"url": "not a url"},
        {"url": PUBLIC, "events": ["agent.execution.nope"]},
        {"url": PUBLIC, "events": []},
        {"url": PUBLIC, "secret": "mine"},
        {"events": ["agent.execution.completed"]},
    ],
)
def test_bad_bodies_are_422_problems(api, body):  # type: ignore[no-untyped-def]
    answer = api.post("/v1/webhooks", json=body)
    assert answer.status_code == 422 and answer.content_type == "application/problem+json"
    assert answer.get_json()["errors"]


def test_a_tenant_has_at_most_webhook_max_per_tenant_endpoints(make_app):  # type: ignore[no-untyped-def]
    api = make_app(webhook_max_per_tenant=2).test_client()
    for _ in range(2):
        assert api.post("/v1/webhooks", json={"url": PUBLIC}).status_code == 201
    third = api.post("/v1/webhooks", json={"url": PUBLIC})
    assert third.status_code == 409 and "WEBHOOK_MAX_PER_TENANT" in third.get_json()["detail"]
    assert third.content_type == "application/problem+json"


def test_another_tenants_endpoint_is_404_everywhere_and_stays_as_it_was(make_app):  # type: ignore[no-untyped-def]
    app = make_app(auth_enabled=True, rate_limit=0)
    keys = app.extensions["agentexec.keys"]
    acme = {"Authorization": f"Bearer {keys.create('acme', 'test')[0]}"}
    globex = {"Authorization": f"Bearer {keys.create('globex', 'test')[0]}"}
    client = app.test_client()
    hook = client.post("/v1/webhooks", json={"url": PUBLIC}, headers=acme).get_json()
    base = f"/v1/webhooks/{hook['id']}"
    delivery = f"{base}/deliveries/{uuid.uuid4()}/redeliver"
    for method, url, body in (
        ("get", base, None),
        ("patch", base, {"enabled": False}),
        ("delete", base, None),
        ("get", f"{base}/deliveries", None),
        ("post", delivery, None),
    ):
        answer = getattr(client, method)(url, json=body, headers=globex)
        assert answer.status_code == 404, (method, url, answer.get_json())
        assert answer.content_type == "application/problem+json"
    assert client.get("/v1/webhooks", headers=globex).get_json()["total"] == 0
    assert client.get(base, headers=acme).get_json()["enabled"] is True
    assert client.get("/v1/webhooks").status_code == 401


def test_the_webhook_routes_are_documented_with_examples(api):  # type: ignore[no-untyped-def]
    doc = api.get("/openapi.json").get_json()
    create = doc["paths"]["/v1/webhooks"]["post"]
    assert {"201", "409", "422"} <= set(create["responses"])
    schemas = doc["components"]["schemas"]
    operations = [
        op for path, item in doc["paths"].items() if path.startswith("/v1/webhooks") for op in item.values()
    ]
    assert len(operations) == 7
    for op in operations:
        media = [op["requestBody"]["content"]["application/json"]] if "requestBody" in op else []
        media += [
            r["content"]["application/json"]
            for c, r in op["responses"].items()
            if c.startswith("2") and "content" in r
        ]
        assert all(m["examples"] for m in media) and (media or op["operationId"] == "deleteWebhook"), op
    assert "secret" in schemas["WebhookCreated"]["properties"]
    assert "secret" not in schemas["WebhookOut"]["properties"]
    redeliver = doc["paths"]["/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"]["post"]
    assert "202" in redeliver["responses"]
