"""GET /v1/executions?metadata.KEY=VALUE: repeatable (all must match), the same filter as bulk
actions, bad keys refused as problem+json, served by the GIN index."""

from __future__ import annotations

from typing import Any


def _make(api: Any, agent: dict[str, Any], metadata: dict[str, Any]) -> str:
    resp = api.post(
        "/v1/executions",
        json={"agent_id": agent["id"], "parameters": {"input": "x"}, "start": False, "metadata": metadata},
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return str(resp.get_json()["id"])


def _ids(api: Any, query: str) -> set[str]:
    resp = api.get(f"/v1/executions?{query}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return {item["id"] for item in resp.get_json()["items"]}


def test_metadata_filters_repeat_with_and_and_match_like_the_bulk_filter(api, api_agent):  # type: ignore[no-untyped-def]
    prod_eu = _make(api, api_agent, {"env": "prod", "region": "eu", "n": 5})
    prod_us = _make(api, api_agent, {"env": "prod", "region": "us", "n": "5"})
    dev = _make(api, api_agent, {"env": "dev", "flag": True})
    _make(api, api_agent, {})

    assert _ids(api, "metadata.env=prod") == {prod_eu, prod_us}
    assert _ids(api, "metadata.env=prod&metadata.region=eu") == {prod_eu}
    assert _ids(api, "metadata.env=prod&metadata.region=asia") == set()
    assert _ids(api, "metadata.env=staging") == set()
    assert _ids(api, "metadata.n=5") == {prod_eu, prod_us}  # the number and the string
    assert _ids(api, "metadata.flag=true") == {dev}
    assert _ids(api, "metadata.env=prod&state=PENDING&page_size=1") <= {prod_eu, prod_us}
    page = api.get("/v1/executions?metadata.env=prod").get_json()
    assert page["total"] == 2 and page["total_exact"] is True

    # The bulk filter takes the same pairs and selects the same executions.
    dry = api.post(
        "/v1/executions/bulk/cancel",
        json={"filter": {"metadata": {"env": "prod", "n": "5"}}, "dry_run": True},
    ).get_json()
    assert dry["matched"] == 2 and dry["changed"] == 2


def test_bad_metadata_filters_are_422_problems(api, api_agent):  # type: ignore[no-untyped-def]
    for query, says in [
        ("metadata.=x", "metadata key"),
        ("metadata.a%20b=x", "metadata key"),
        ("metadata=env", "metadata.KEY=VALUE"),
        ("metadata.env=prod&metadata.env=dev", "more than once"),
        ("metadata.k=" + "v" * 1001, "1,000"),
        ("&".join(f"metadata.k{i}=v" for i in range(21)), "at most 20"),
    ]:
        resp = api.get(f"/v1/executions?{query}")
        assert resp.status_code == 422, (query, resp.get_data(as_text=True))
        assert resp.mimetype == "application/problem+json"
        assert says in resp.get_data(as_text=True), (query, resp.get_data(as_text=True))


def test_the_metadata_filter_uses_the_gin_index(api_app):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    svc = api_app.extensions["agentexec.service"]
    with svc.repository.unit_of_work() as work:
        work.session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            r[0]
            for r in work.session.execute(
                text("EXPLAIN SELECT id FROM executions WHERE metadata @> CAST(:m AS jsonb)"),
                {"m": '{"env": "prod"}'},
            )
        )
    assert "ix_executions_metadata" in plan, plan
