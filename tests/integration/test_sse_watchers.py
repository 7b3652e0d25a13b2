"""Many watchers, and no client that can starve the others (gunicorn, api.server.GeventWorker).

The execution is driven from the test (no worker runs it), so the events come exactly
when the streams are open. Streams are raw sockets (tests/integration/sse_clients.py).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.schemas import AgentCreate, ExecutionCreate, ExecutionProgressUpdate
from app.schemas import ExecutionState as S
from tests.conftest import wait_for
from tests.integration.conftest import Server, start_gunicorn
from tests.integration.sse_clients import RawStream, pump
from tests.processes import stop_process

CAP = 3
COMPLETED = b"event: agent.execution.completed"


@pytest.fixture(scope="module")
def server(settings, celery_worker, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    env = {
        "AUTH_ENABLED": "true",
        "RATE_LIMIT": "0",
        "MAX_STREAMS_PER_KEY": str(CAP),
        "SSE_SEND_TIMEOUT_SECONDS": "1",
        "WEB_BODY_TIMEOUT": "1",
    }
    srv = start_gunicorn(tmp_path_factory.mktemp("gunicorn") / "gunicorn.log", **env)
    try:
        yield srv
    finally:
        stop_process(srv.process)


@pytest.fixture(scope="module")
def big_server(settings, celery_worker, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    env = {"AUTH_ENABLED": "true", "RATE_LIMIT": "0", "MAX_STREAMS_PER_KEY": "5000"}
    srv = start_gunicorn(tmp_path_factory.mktemp("gunicorn-big") / "gunicorn.log", **env)
    try:
        yield srv
    finally:
        stop_process(srv.process)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def new_key(service: Any, tenant: str = "default") -> tuple[str, Any]:
    key, row = service.keys.create(tenant, f"watchers-{uuid.uuid4().hex[:6]}")
    return key, row


def pending_execution(service: Any, tenant: str = "default") -> Any:
    agent = service.create_agent(AgentCreate(name=f"watch-{uuid.uuid4().hex[:6]}"), tenant=tenant)
    execution, _ = service.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False), tenant=tenant
    )
    return execution


def run_to_completion(service: Any, execution_id: uuid.UUID, progress: int = 0, text: str = "") -> None:
    service.start_execution(execution_id)
    service.state_manager.change_state(execution_id, S.RUNNING, "test", expected_state=S.QUEUED)
    for i in range(progress):
        service.progress_tracker.update_progress(
            execution_id, ExecutionProgressUpdate(percentage=min(99, i * 99 / max(progress, 1)), message=text)
        )
    service.state_manager.change_state(
        execution_id, S.COMPLETED, "test", values={"result": {"output": "done"}}
    )


def open_streams(server: Server, execution_id: Any, key: str, n: int, **kw: Any) -> list[RawStream]:
    path = f"/v1/executions/{execution_id}/events"
    return [RawStream(port_of(server), path, {"Authorization": f"Bearer {key}"}, **kw) for _ in range(n)]


def lease_count(settings: Any, key_row: Any) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.zcard(f"agentexec:streams:{key_row.id}"))
    finally:
        client.close()


def worker_rss_kb(server: Server) -> int:
    """The summed resident memory of the gunicorn workers (the master's children)."""
    total = 0
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def test_a_thousand_streams_share_one_redis_subscription_per_process_and_all_see_the_end(
    big_server: Server, service: Any, settings: Any
) -> None:
    key, _ = new_key(service)
    execution = pending_execution(service)
    streams = open_streams(big_server, execution.id, key, 1000)
    try:
        pump(streams, lambda: all(s.status == 200 and b"keepalive" in s.data for s in streams), 60, "headers")
        channel = f"agent.execution.events.{execution.id}"
        client = redis.Redis.from_url(settings.redis_url)
        subscribers = dict(client.pubsub_numsub(channel))[channel.encode()]
        client.close()
        assert 1 <= subscribers <= 2  # one per web process (2), not one per stream
        run_to_completion(service, execution.id, progress=3)
        pump(streams, lambda: all(s.closed for s in streams), 60, "every stream to end")
        assert all(COMPLETED in s.data for s in streams)
        assert len({tuple(s.event_ids()) for s in streams}) == 1  # the same events, in the same order
    finally:
        for s in streams:
            s.close()


def test_a_key_over_its_stream_cap_gets_429_and_a_closed_stream_frees_its_place_at_once(
    server: Server, service: Any, settings: Any
) -> None:
    key, row = new_key(service)
    other, _ = new_key(service)
    execution = pending_execution(service)
    held = open_streams(server, execution.id, key, CAP)
    try:
        pump(held, lambda: all(s.status == 200 for s in held), 20, "the streams' heads")
        with server.client(headers={"Accept": "text/event-stream", "Authorization": f"Bearer {key}"}) as c:
            refused = c.get(f"/v1/executions/{execution.id}/events")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"]
        assert refused.json()["max_streams_per_key"] == CAP
        another = open_streams(server, execution.id, other, 1)  # another key is not affected
        pump(another, lambda: another[0].status is not None, 20, "the other key's head")
        assert another[0].status == 200
        another[0].close()

        held.pop().close()  # the server notices the hang-up and frees the place
        wait_for(lambda: lease_count(settings, row) == CAP - 1, timeout=10, what="the lease to be released")
        again = open_streams(server, execution.id, key, 1)
        pump(again, lambda: again[0].status is not None, 20, "a new stream's head")
        assert again[0].status == 200
        held += again
    finally:
        for s in held:
            s.close()


def test_a_revoked_keys_open_streams_end_within_the_key_cache_lifetime(server: Server, service: Any) -> None:
    key, row = new_key(service)
    execution = pending_execution(service)
    streams = open_streams(server, execution.id, key, 2)
    try:
        pump(streams, lambda: all(s.status == 200 for s in streams), 20, "the streams' heads")
        assert service.keys.revoke(row.id)
        pump(streams, lambda: all(s.closed for s in streams), 15, "the revoked key's streams to end")
    finally:
        for s in streams:
            s.close()


def test_a_client_that_does_not_read_is_dropped_memory_stays_flat_and_it_resumes_by_last_event_id(
    server: Server, service: Any, settings: Any
) -> None:
    key, row = new_key(service)
    execution = pending_execution(service)
    run_to_completion(service, execution.id, progress=1500, text="x" * 1000)
    log_ids = [str(e.id) for e in service.get_events(execution.id, after=0, limit=5000)]
    stuck: list[RawStream] = []

    def stuck_client() -> None:
        stuck.extend(open_streams(server, execution.id, key, 1, rcvbuf=4096))
        wait_for(lambda: lease_count(settings, row) == 1, timeout=30, what="the stream to start")
        wait_for(lambda: lease_count(settings, row) == 0, timeout=30, what="the stuck stream to be dropped")

    try:
        for _ in range(4):  # warm-up: both workers have replayed pages of this log before
            stuck_client()
        before = worker_rss_kb(server)
        # Ten more that read nothing: they would pin 10x the log's frames (see the end) if the
        # server queued what it cannot send.
        for _ in range(10):
            stuck_client()
        growth_kb = worker_rss_kb(server) - before
        assert growth_kb < 4 * 1024, f"the workers grew by {growth_kb} KB"

        first = stuck[0]
        pump([first], lambda: first.closed, 30, "the dropped stream's buffered bytes")
        got = first.event_ids()
        assert got and COMPLETED not in first.data  # cut before the end
        resumed = [
            RawStream(
                port_of(server),
                f"/v1/executions/{execution.id}/events",
                {"Authorization": f"Bearer {key}", "Last-Event-ID": got[-1]},
            )
        ]
        pump(resumed, lambda: resumed[0].closed, 60, "the resumed stream to end")
        assert got + resumed[0].event_ids() == log_ids  # no gap, no duplicate
        assert len(first.body) + len(resumed[0].body) > 1_000_000  # the frames of the whole log
    finally:
        for s in stuck:
            s.close()


def test_a_truncated_body_is_answered_408_and_slow_headers_are_cut(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        sock.sendall(b"POST /v1/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b'Content-Length: 100\r\n\r\n{"name":')
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"application/problem+json" in head
    assert json.loads(body)["status"] == 408

    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest of the head
        assert sock.recv(65536) == b""  # closed by the server (keep-alive timeout), not held


def test_the_open_files_limit_of_the_workers_is_raised_to_the_hard_limit(server: Server) -> None:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    for pid in children:
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        assert soft == hard, line


@pytest.fixture(scope="module")
def late_server(settings, celery_worker, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    env = {"WEB_QUEUE_TIMEOUT": "1"}
    srv = start_gunicorn(tmp_path_factory.mktemp("gunicorn-late") / "gunicorn.log", workers=1, **env)
    try:
        yield srv
    finally:
        stop_process(srv.process)


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_request_that_could_not_start_in_time_is_answered_503_not_run_late(late_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(late_server)), timeout=30) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(head[:10])
        started = time.monotonic()
        # The head arrives in full only after WEB_QUEUE_TIMEOUT (1 s), within the keep-alive (2 s).
        wait_for(lambda: time.monotonic() - started > 1.3, timeout=5, interval=0.05, what="1.3 s")
        sock.sendall(head[10:])
        head_out, _, body = _answer(sock).partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: " in head_out and b"application/problem+json" in head_out
    assert json.loads(body)["status"] == 503


def test_a_post_whose_client_hung_up_before_it_started_creates_nothing(late_server: Server) -> None:
    name = f"gone-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"name": name}).encode()
    request = (
        b"POST /v1/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", port_of(late_server)), timeout=30) as sock:
        # Corked: the request and the FIN leave in one segment, as from a client that gave up
        # waiting (its timeout) and closed before the server got to the request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        assert _answer(sock) == b""  # closed without an answer
    wait_for(
        lambda: "client hung up" in late_server.log.read_text(), timeout=10, what="the refusal's log line"
    )
    with late_server.client() as c:
        names = [a["name"] for a in c.get("/v1/agents", params={"page_size": 200}).json()["items"]]
    assert name not in names
