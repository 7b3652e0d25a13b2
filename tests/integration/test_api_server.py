"""The API served by gunicorn (gthread, 2 workers): SSE streams, concurrent idempotent creates, /metrics.

A real worker runs the executions. SSE_HEARTBEAT_SECONDS is 0.5 in the server's
environment, so heartbeats and the release of a gone client's subscription are quick.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.events import EVENT_TYPES
from tests.conftest import wait_for
from tests.integration.conftest import Server, wait_finished

SSE_HEADERS = {"Accept": "text/event-stream"}


def read_sse(lines: Iterator[str], within: float = 20.0) -> Iterator[dict[str, Any]]:
    """Parse SSE frames from response lines: {'id', 'event', 'data'} per event, {'comment'} per comment.

    Fails when the stream is still open after `within` seconds (heartbeats keep lines coming).
    """
    deadline = time.monotonic() + within
    frame: dict[str, Any] = {}
    for line in lines:
        if time.monotonic() > deadline:
            raise AssertionError(f"the stream was still open after {within} s")
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            frame[name] = value[1:] if value.startswith(" ") else value


def events_of(frames: Iterator[dict[str, Any]], count: int | None = None) -> list[dict[str, Any]]:
    """The event frames (data parsed, without the stream's `retry:` hint), up to `count` of them
    or to the end of the stream."""
    out = []
    for frame in frames:
        if "data" in frame:
            frame.pop("retry", None)
            frame["data"] = json.loads(frame["data"])
            out.append(frame)
            if count is not None and len(out) == count:
                break
    return out


@pytest.fixture
def server_agent(api_server: Server, clean_db) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with api_server.client() as c:
        resp = c.post("/v1/agents", json={"name": f"agent-{uuid.uuid4().hex[:6]}"})
        assert resp.status_code == 201, resp.text
        return dict(resp.json())


def _pipeline(steps: int, latency_ms: int) -> dict[str, Any]:
    return {
        "type": "pipeline",
        "input": "hello",
        "steps": [{"name": f"s{i}", "prompt": f"{i}: {{input}}"} for i in range(steps)],
        "simulate": {"latency_ms": latency_ms, "chunks": 5},
    }


def test_an_sse_client_that_reconnects_with_last_event_id_gets_exactly_the_missed_events_then_the_rest(
    api_server: Server, server_agent: dict[str, Any]
) -> None:
    with api_server.client() as c:
        execution = c.post(
            "/v1/executions",
            json={"agent_id": server_agent["id"], "parameters": _pipeline(steps=5, latency_ms=300)},
        ).json()
        url = f"/v1/executions/{execution['id']}/events"
        logged = f"{url}?types={','.join(EVENT_TYPES)}"  # the log's events, not the output deltas
        with c.stream("GET", logged, headers=SSE_HEADERS) as first:
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            before = events_of(read_sse(first.iter_lines()), count=3)
        # Disconnected mid-run: events happen meanwhile; reconnect as a browser would.
        time.sleep(0.4)
        with c.stream("GET", logged, headers=SSE_HEADERS | {"Last-Event-ID": before[-1]["id"]}) as second:
            after = events_of(read_sse(second.iter_lines()))
        log = c.get(f"{url}?limit=1000").json()["items"]

    received = before + after
    ids = [int(e["id"]) for e in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    assert ids == [e["id"] for e in log], "not exactly the logged events, in order"
    assert received[-1]["event"] == "agent.execution.completed"
    assert received[-1]["data"]["payload"]["state"] == "COMPLETED"
    for frame in received:
        assert frame["event"] == frame["data"]["type"] and int(frame["id"]) == frame["data"]["id"]
        assert frame["data"]["execution_id"] == execution["id"]
        assert set(frame["data"]) == {"id", "type", "execution_id", "created_at", "payload"}
    progress = [e for e in after if e["event"] == "agent.execution.progress"]
    assert len(progress) >= 5


def test_a_stream_of_a_finished_execution_replays_and_closes_at_once(
    api_server: Server, server_agent: dict[str, Any]
) -> None:
    with api_server.client() as c:
        execution = c.post("/v1/executions", json={"agent_id": server_agent["id"], "parameters": {}}).json()
        wait_finished(c, execution["id"])
        url = f"/v1/executions/{execution['id']}/events"
        started = time.monotonic()
        with c.stream("GET", url, headers=SSE_HEADERS) as resp:
            everything = events_of(read_sse(resp.iter_lines()))
        with c.stream("GET", f"{url}?after={everything[1]['id']}", headers=SSE_HEADERS) as resp:
            rest = events_of(read_sse(resp.iter_lines()))
        with c.stream("GET", url, headers=SSE_HEADERS | {"Last-Event-ID": everything[-1]["id"]}) as resp:
            nothing = events_of(read_sse(resp.iter_lines()))
    assert time.monotonic() - started < 3
    assert everything[-1]["event"] == "agent.execution.completed"
    assert rest == everything[2:] and nothing == []


def test_heartbeats_find_a_gone_client_and_release_its_subscription(
    api_server: Server, server_agent: dict[str, Any], settings
) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(settings.redis_url)
    with api_server.client() as c:
        pending = c.post(
            "/v1/executions", json={"agent_id": server_agent["id"], "parameters": {}, "start": False}
        ).json()
        channel = f"agent.execution.events.{pending['id']}"
        with c.stream("GET", f"/v1/executions/{pending['id']}/events", headers=SSE_HEADERS) as resp:
            frames = read_sse(resp.iter_lines())
            first = events_of(frames, count=1)
            assert first[0]["data"]["payload"]["new_state"] == "PENDING"
            assert next(f for f in frames if "comment" in f) == {"comment": "keepalive"}
            assert dict(r.pubsub_numsub(channel))[channel.encode()] == 1
        # The client is gone; the next heartbeat write fails and the server unsubscribes.
        wait_for(
            lambda: dict(r.pubsub_numsub(channel))[channel.encode()] == 0,
            timeout=10,
            what="the server to release the subscription of a gone client",
        )


def test_fifty_concurrent_creates_with_one_idempotency_key_make_one_execution(
    api_server: Server, server_agent: dict[str, Any]
) -> None:
    body = {"agent_id": server_agent["id"], "parameters": {"input": "once"}}
    headers = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    barrier = threading.Barrier(50)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(base_url=api_server.url, timeout=30) as c:
            barrier.wait()
            resp = c.post("/v1/executions", json=body, headers=headers)
            with lock:
                results.append((resp.status_code, resp.json().get("id", resp.text)))

    threads = [threading.Thread(target=post) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 1, 200: 49}, results
    assert len({execution_id for _, execution_id in results}) == 1
    with api_server.client() as c:
        listed = c.get("/v1/executions", params={"agent_id": server_agent["id"]}).json()
        assert listed["total"] == 1
        done = wait_finished(c, listed["items"][0]["id"])
        history = c.get(f"/v1/executions/{done['id']}/history").json()["items"]
    assert [h["to_state"] for h in history] == ["PENDING", "QUEUED", "RUNNING", "COMPLETED"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_parse_and_move_when_executions_run_summed_over_gunicorn_workers(
    api_server: Server, server_agent: dict[str, Any]
) -> None:
    with api_server.client() as c:
        before = _samples(c.get("/metrics").text)
        for _ in range(3):
            created = c.post(
                "/v1/executions",
                json={"agent_id": server_agent["id"], "parameters": {"input": "count these words"}},
            )
            assert created.status_code == 201
            wait_finished(c, created.json()["id"])
        for _ in range(20):
            assert c.get("/healthz").status_code == 200
        resp = c.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    after = _samples(resp.text)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    # Request counts of both workers are summed (20 health checks, whichever worker served them).
    assert moved("agentexec_http_requests_total", route="/healthz", status="200", method="GET") == 20
    assert moved("agentexec_http_requests_total", route="/v1/executions", status="201", method="POST") == 3
    assert moved("agentexec_http_request_duration_seconds_count", route="/v1/executions", method="POST") == 3

    # Execution figures come from PostgreSQL, cached for a moment per process: poll until fresh.
    def execution_figures_moved() -> bool:
        nonlocal after
        with api_server.client() as c:
            after = _samples(c.get("/metrics").text)
        return moved("agentexec_execution_duration_seconds_count", state="COMPLETED") >= 3

    wait_for(execution_figures_moved, timeout=10, interval=0.2, what="execution figures to move")
    assert _value(after, "agentexec_metrics_database_up") == 1
    assert _value(after, "agentexec_executions", state="COMPLETED") >= 3
    assert moved("agentexec_state_transitions_total", from_state="RUNNING", to_state="COMPLETED") >= 3
    assert moved("agentexec_queue_wait_seconds_count") >= 3
    assert moved("agentexec_model_calls_total") >= 3
    assert moved("agentexec_model_call_seconds_count") >= 3
    assert moved("agentexec_model_tokens_total", kind="prompt") >= 3 * 3
    assert moved("agentexec_model_tokens_total", kind="completion") > 0
    assert _value(
        after, "agentexec_execution_duration_seconds_bucket", state="COMPLETED", le="+Inf"
    ) == _value(after, "agentexec_execution_duration_seconds_count", state="COMPLETED")


def test_a_body_over_max_request_bytes_is_413_with_content_length_or_chunked(api_server: Server) -> None:
    too_big = b'{"agent_id": "' + b"x" * (1024 * 1024) + b'"}'

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(too_big), 64 * 1024):
            yield too_big[start : start + 64 * 1024]

    for content in (too_big, chunked()):
        with api_server.client() as c:  # a new connection: the server closes one whose body it did not read
            resp = c.post("/v1/executions", content=content, headers={"Content-Type": "application/json"})
        assert resp.status_code == 413 and resp.headers["content-type"] == "application/problem+json"


def _raw_request(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these) and read the answer to its end."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_gunicorns_own_400_and_431_answers_are_problem_json_with_their_status(api_server: Server) -> None:
    many_headers = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    cases = [
        # (what gunicorn refuses, the request, its status)
        (
            "a request line over limit_request_line",
            b"GET /v1/agents?q=" + b"a" * 5000 + b" HTTP/1.1\r\n",
            400,
        ),
        (
            "a header over limit_request_field_size",
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n",
            431,
        ),
        ("more headers than limit_request_fields", b"GET /healthz HTTP/1.1\r\n" + many_headers, 431),
        ("a header line without a colon", b"GET /v1/agents HTTP/1.1\r\nNo colon here\r\n", 400),
        ("an unknown HTTP version", b"GET /healthz HTTP/9.9\r\n", 400),
    ]
    for what, request, status in cases:
        got, headers, body = _raw_request(api_server, request + b"Host: x\r\n\r\n")
        assert got == status, what
        assert headers["content-type"] == "application/problem+json", what
        problem = json.loads(body)
        assert problem["status"] == status and {"type", "title", "detail"} <= set(problem), what
        assert int(headers["content-length"]) == len(body), what
        assert b"<html" not in body.lower() and b"traceback" not in body.lower(), what
    # The server is unharmed and keeps answering.
    with api_server.client() as c:
        assert c.get("/healthz").status_code == 200
