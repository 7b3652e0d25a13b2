"""The SSE route: its frames as clients parse them, without Redis, and when the server shuts down.

The frames are read raw and dispatched as httpx-sse does (a block with any of `event`,
`data`, `id` or `retry` is an event, even with no data), so a block a client would see
as an empty event is caught.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import Server, free_port, start_gunicorn, wait_finished


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


# ------------------------------------------------------------ frames as clients see them


def httpx_sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Events as httpx-sse 0.4.3's SSEDecoder dispatches them: {'event', 'data', 'id', 'retry'}.

    Like it, the last event id is sticky (never reset by a block) and a blank line dispatches
    an event whenever an event type, data, a retry or that sticky id is set: so once an event
    with an id has arrived, a comment block (`: keepalive` and a blank line) comes out as an
    empty `message` event (httpx-sse issue #35). `retry` is present only in a block that had one.
    """
    block: dict[str, Any] = {}
    data: list[str] = []
    last_id = ""
    for line in lines:
        if line == "":
            if block or data or last_id:
                event = {"event": block.get("event") or "message", "data": "\n".join(data)}
                yield (
                    event
                    | ({"id": last_id} if last_id else {})
                    | {k: v for k, v in block.items() if k == "retry"}
                )
            block, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                block[name] = value
            elif name == "id" and "\0" not in value:
                last_id = value
            elif name == "retry" and value.isdigit():
                block["retry"] = int(value)


def _stream_lines(server: Server, path: str, headers: dict[str, str] | None = None) -> Iterator[str]:
    with (
        server.client(timeout=20) as c,
        c.stream("GET", path, headers={"Accept": "text/event-stream"} | (headers or {})) as resp,
    ):
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        yield from resp.iter_lines()


def _new_agent(c: Any) -> str:
    resp = c.post("/v1/agents", json={"name": f"sse-{uuid.uuid4().hex[:8]}"})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_the_first_event_block_carries_retry_and_no_block_is_an_empty_event(
    api_server: Server, clean_db
) -> None:  # type: ignore[no-untyped-def]
    with api_server.client() as c:
        agent = _new_agent(c)
        done = c.post("/v1/executions", json={"agent_id": agent, "parameters": {}}).json()
        wait_finished(c, done["id"])
    replayed = list(httpx_sse_events(_stream_lines(api_server, f"/v1/executions/{done['id']}/events")))
    assert replayed[0]["retry"] == 2000 and replayed[0]["event"] == "agent.execution.state_changed"
    assert all(e["data"] and e["event"].startswith("agent.execution.") for e in replayed), replayed
    assert [e for e in replayed if "retry" in e] == replayed[:1]
    assert replayed[-1]["event"] == "agent.execution.completed"

    # Nothing to replay at first (resumed after the last event of a PENDING execution): the
    # stream opens with a heartbeat comment, and `retry` waits for the first real event.
    with api_server.client() as c:
        pending = c.post("/v1/executions", json={"agent_id": agent, "parameters": {}, "start": False}).json()
        last = c.get(f"/v1/executions/{pending['id']}/events").json()["items"][-1]["id"]
    lines = _stream_lines(api_server, f"/v1/executions/{pending['id']}/events", {"Last-Event-ID": str(last)})
    assert next(lines).startswith(":")  # the headers came at once, with a comment
    with api_server.client() as c:
        assert c.post(f"/v1/executions/{pending['id']}/start").status_code == 200
    live = list(httpx_sse_events(lines))
    assert live[0]["retry"] == 2000 and int(live[0]["id"]) == last + 1
    assert all(e["data"] for e in live) and [e for e in live if "retry" in e] == live[:1]
    assert live[-1]["event"] == "agent.execution.completed"


@pytest.mark.parametrize("api_server", [{"SSE_HEARTBEAT_SECONDS": "0.2"}], indirect=True)
def test_heartbeats_between_events_are_no_empty_events_to_httpx_sse(api_server: Server, clean_db) -> None:  # type: ignore[no-untyped-def]
    # A PENDING execution: after its first event the stream only has heartbeats (every 0.2 s) to
    # send until it is started; then it runs to its end.
    with api_server.client() as c:
        agent = _new_agent(c)
        pending = c.post("/v1/executions", json={"agent_id": agent, "parameters": {}, "start": False}).json()
    stream = _stream_lines(api_server, f"/v1/executions/{pending['id']}/events")
    lines, beats = [], 0
    while beats < 3:
        lines.append(next(stream))
        beats += lines[-1].startswith(": keepalive") and any(line.startswith("id:") for line in lines)
    with api_server.client() as c:
        assert c.post(f"/v1/executions/{pending['id']}/start").status_code == 200
    events = list(httpx_sse_events(iter(lines + list(stream))))
    assert all(e["data"] and e["event"].startswith("agent.execution.") for e in events), events
    assert json.loads(events[0]["data"])["payload"]["new_state"] == "PENDING"
    assert events[-1]["event"] == "agent.execution.completed"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["graceful", "quick"])
def test_a_server_shutdown_ends_open_streams_with_a_reconnect_event_within_a_second(
    settings, celery_worker, clean_db, tmp_path, stop
) -> None:  # type: ignore[no-untyped-def]
    # Heartbeats every 30 s: the stream must notice the shutdown by itself, not at a heartbeat.
    server = start_gunicorn(
        tmp_path / "gunicorn.log", workers=1, graceful_timeout=15, SSE_HEARTBEAT_SECONDS="30"
    )
    try:
        with server.client() as c:
            agent = _new_agent(c)
            pending = c.post(
                "/v1/executions", json={"agent_id": agent, "parameters": {}, "start": False}
            ).json()
        events = httpx_sse_events(_stream_lines(server, f"/v1/executions/{pending['id']}/events"))
        first = next(events)
        assert json.loads(first["data"])["payload"]["new_state"] == "PENDING"
        server.process.send_signal(stop)
        signalled = time.monotonic()
        rest = list(events)  # to the end of the stream
        ended = time.monotonic() - signalled
        assert [e["event"] for e in rest] == ["reconnect"], rest
        hint = json.loads(rest[0]["data"])
        assert hint == {"reason": "server_shutdown", "last_event_id": int(first["id"]), "retry_ms": 2000}
        # No id line: the client's Last-Event-ID stays the last event's (httpx-sse reports it as is).
        assert rest[0]["retry"] == 2000 and rest[0]["id"] == first["id"]
        assert ended < 2.5, f"the stream took {ended:.1f} s to end"
        wait_for(lambda: server.process.poll() is not None, timeout=8, what="gunicorn to exit")
        assert time.monotonic() - signalled < 8, "gunicorn waited for its graceful timeout"
        log = server.log.read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(5)
