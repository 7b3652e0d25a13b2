"""Bulk cancel and retry (#16 item 3) through the API with a real worker: each execution goes
through the guarded transition of a single call; skipped ones say why; dry_run changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import wait_for
from tests.integration.conftest import wait_finished

PROBLEM = "application/problem+json"
SLOW = {"input": "x", "simulate": {"latency_ms": 30000, "chunks": 300}}


def _agent(api: Any) -> str:
    return str(api.post("/v1/agents", json={"name": f"bulk-{uuid.uuid4().hex[:8]}"}).get_json()["id"])


def _create(api: Any, agent: str, **fields: Any) -> dict[str, Any]:
    body = {"agent_id": agent, "parameters": {"input": "hello"}} | fields
    resp = api.post("/v1/executions", json=body)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return dict(resp.get_json())


def test_bulk_cancel_by_filter_ends_every_active_one_and_reports_the_rest(api):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    done = wait_finished(api, _create(api, agent, metadata={"batch": "b1"})["id"])
    running = [_create(api, agent, parameters=SLOW, metadata={"batch": "b1"}) for _ in range(3)]
    held = [_create(api, agent, start=False, metadata={"batch": "b1"}) for _ in range(150)]
    other = _create(api, agent, start=False, metadata={"batch": "b2"})
    for r in running:
        wait_for(
            lambda r=r: api.get(f"/v1/executions/{r['id']}").get_json()["state"] == "RUNNING", what="run"
        )

    body = {"filter": {"agent_id": agent, "metadata": {"batch": "b1"}}, "limit": 10000}
    dry = api.post("/v1/executions/bulk/cancel", json=body | {"dry_run": True}).get_json()
    assert (dry["matched"], dry["changed"]) == (154, 153)
    assert dry["skipped"] == [
        {"id": done["id"], "state": "COMPLETED", "reason": "a COMPLETED execution cannot be cancelled"}
    ]
    assert api.get(f"/v1/executions/{held[0]['id']}").get_json()["state"] == "PENDING"  # nothing changed

    result = api.post("/v1/executions/bulk/cancel", json=body).get_json()
    assert (result["matched"], result["changed"], len(result["skipped"])) == (154, 153, 1)
    for e in [*running, *held[:5], *held[-5:]]:
        assert wait_finished(api, e["id"])["state"] == "CANCELLED"
    assert api.get(f"/v1/executions/{other['id']}").get_json()["state"] == "PENDING"  # metadata b2
    listed = api.get(f"/v1/executions?agent_id={agent}&state=CANCELLED&page_size=200").get_json()
    assert listed["total"] == 153


def test_bulk_retry_by_ids_retries_failed_ones_and_skips_unknown_and_others(api):  # type: ignore[no-untyped-def]
    agent = _agent(api)
    failing = {"input": "x", "simulate": {"fail_permanently": True}}
    failed = [wait_finished(api, _create(api, agent, parameters=failing)["id"]) for _ in range(2)]
    ok = wait_finished(api, _create(api, agent)["id"])
    unknown = str(uuid.uuid4())
    ids = [failed[0]["id"], failed[1]["id"], ok["id"], unknown]
    result = api.post("/v1/executions/bulk/retry", json={"ids": ids, "reason": "provider fixed"}).get_json()
    assert (result["matched"], result["changed"]) == (3, 2)
    assert {(s["id"], s["state"]) for s in result["skipped"]} == {(unknown, None), (ok["id"], "COMPLETED")}
    for f in failed:
        again = wait_finished(api, f["id"])
        assert again["attempt"] == 2 and again["state"] == "FAILED"  # it fails again, permanently


def test_bulk_bodies_are_checked(api):  # type: ignore[no-untyped-def]
    for body in (
        {},
        {"ids": [], "filter": {}},
        {"ids": [str(uuid.uuid4())], "filter": {}},
        {"ids": []},
        {"filter": {}, "limit": 10001},
        {"filter": {"bogus": 1}},
    ):
        resp = api.post("/v1/executions/bulk/cancel", json=body)
        assert resp.status_code == 422 and resp.mimetype == PROBLEM, body
    assert api.get("/v1/executions/bulk/cancel").status_code == 405
