"""The SSE route when the API cannot reach Redis: it polls the log and still ends after the final event."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import free_port


@pytest.fixture
def api_without_redis(settings, session_factory, celery_worker, clean_db):  # type: ignore[no-untyped-def]
    """The app with its event bus pointed at a port where no Redis listens (the worker's Redis is fine)."""
    from api import create_app
    from app.events import EventBus

    app = create_app(
        settings=settings,
        session_factory=session_factory,
        event_bus=EventBus(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2),
    )
    return app.test_client()


def test_an_sse_stream_falls_back_to_polling_the_log_when_redis_is_down(api_without_redis):
    api = api_without_redis
    agent = api.post("/v1/agents", json={"name": "no-redis"}).get_json()
    steps = [{"name": f"s{i}", "prompt": "{input}"} for i in range(3)]
    execution = api.post(
        "/v1/executions",
        json={
            "agent_id": agent["id"],
            "parameters": {"type": "pipeline", "input": "x", "steps": steps, "simulate": {"latency_ms": 200}},
        },
    )
    assert execution.status_code == 201  # publishing failed; the event rows are in the log all the same
    resp = api.get(
        f"/v1/executions/{execution.get_json()['id']}/events",
        headers={"Accept": "text/event-stream"},
        buffered=False,
    )
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    frames = b"".join(resp.response).decode().split("\n\n")  # ends only after the final event
    resp.close()
    data = [
        json.loads(line[len("data: ") :])
        for f in frames
        for line in f.splitlines()
        if line.startswith("data: ")
    ]
    ids = [d["id"] for d in data]
    assert ids == sorted(set(ids))
    assert data[0]["payload"]["new_state"] == "PENDING"
    assert data[-1]["type"] == "agent.execution.completed" and data[-1]["payload"]["state"] == "COMPLETED"
    log = api.get(f"/v1/executions/{execution.get_json()['id']}/events?limit=1000").get_json()["items"]
    assert ids == [e["id"] for e in log]
