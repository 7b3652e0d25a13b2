"""The client when the network misbehaves: cut streams, lost answers, 429 and 503; and installing it alone.

The API is gunicorn (`api_server`) with the real worker, reached through a TCP proxy
that cuts connections; status answers the API cannot be made to give on demand come
from a local HTTP server (pytest-httpserver).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentexec_client import (
    AsyncClient,
    BudgetExceeded,
    Client,
    ConnectionFailed,
    EventType,
    ExecutionState,
    ProblemError,
    RateLimited,
    Unauthorized,
)
from pytest_httpserver import HTTPServer

ROOT = Path(__file__).resolve().parents[2]
EMPTY_PAGE = {"items": [], "total": 0, "page": 1, "page_size": 50}


LOSE = -1  # a cut that lets the API answer in full, then hangs up without relaying a byte of it


class CuttingProxy:
    """A TCP proxy to the API; `cut(request)` says after how many answer bytes to hang up (None: never)."""

    def __init__(self, upstream_port: int, cut: Callable[[bytes], int | None]):
        self.upstream_port, self.cut = upstream_port, cut
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.lost: list[bytes] = []  # the answers the API gave that never reached the client
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with client, upstream:
            request = _read_message(client)
            self.requests.append(request)
            upstream.sendall(request)
            limit = self.cut(request)
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
            sent = 0
            try:
                if limit == LOSE:
                    self.lost.append(_read_message(upstream))  # the API has done the work and answered
                    return
                while limit is None or sent < limit:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if limit is not None:
                        data = data[: limit - sent]
                    client.sendall(data)
                    sent += len(data)
            except OSError:
                return  # the client hung up first
            finally:  # shutdown, not only close: the pump thread still reads these sockets
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _read_message(sock: socket.socket) -> bytes:
    """One whole HTTP request or answer (headers, then a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Relay later requests of a kept-alive connection upstream."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        return


@pytest.fixture
def client(api_server, clean_db) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    with Client(api_server.url) as c:
        yield c


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_stream_cut_at_random_points_reconnects_and_yields_the_exact_sequence(client: Client) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    cuts = {"left": 12}

    def cut(request: bytes) -> int | None:
        if b"text/event-stream" not in request or cuts["left"] == 0:
            return None
        cuts["left"] -= 1
        return rng.randrange(0, 1500)  # in the headers, in a frame, between frames, some frames in

    client.agents.create("writer")
    steps = [{"name": f"s{i}", "prompt": f"step {i}"} for i in range(4)]
    params = {"type": "pipeline", "input": "x", "steps": steps, "simulate": {"latency_ms": 150}}
    sequences = []
    for flavour in ("sync", "async"):
        cuts["left"] = 12
        execution = client.executions.create("writer", params)
        proxy = CuttingProxy(_port(client.base_url), cut)
        try:
            if flavour == "sync":
                with Client(proxy.url) as cut_client:
                    events = list(cut_client.executions.stream(execution.id))
            else:
                events = asyncio.run(_stream_async(proxy.url, str(execution.id)))
        finally:
            proxy.close()
        logged = list(client.executions.events(execution.id, types=EventType))  # deltas too
        assert [(e.id, e.type) for e in events] == [(e.id, e.type) for e in logged], f"seed {seed}"
        assert events == logged and events[-1].type == "agent.execution.completed"
        streams = [r for r in proxy.requests if b"text/event-stream" in r]
        # Each stream request until the 12th is cut at a random byte; once the run has ended a
        # reconnect's answer (the few events left) may be shorter than its cut and complete, so
        # the count of connections varies: at least one cut, and reconnects from Last-Event-ID.
        assert len(streams) >= 2 and any(b"last-event-id:" in r.lower() for r in streams), f"seed {seed}"
        sequences.append(len(events))
    assert min(sequences) >= 10


async def _stream_async(url: str, execution_id: str) -> list[Any]:
    async with AsyncClient(url) as client:
        return [e async for e in client.executions.stream(execution_id)]


def _drop_first(marker: bytes) -> tuple[Callable[[bytes], int | None], list[bytes]]:
    """A cut that lets the first request containing `marker` reach the API and hangs up before its answer."""
    dropped: list[bytes] = []

    def cut(request: bytes) -> int | None:
        if marker in request and not dropped:
            dropped.append(request)
            return LOSE
        return None

    return cut, dropped


def test_a_create_retried_after_its_answer_was_lost_makes_one_execution(client: Client) -> None:
    writer = client.agents.create("writer")
    cut, dropped = _drop_first(b"POST /v1/executions ")
    proxy = CuttingProxy(_port(client.base_url), cut)
    try:
        with Client(proxy.url) as lossy:
            execution = lossy.executions.create(writer.id, input="once")
    finally:
        proxy.close()
    posts = [r for r in proxy.requests if r.startswith(b"POST /v1/executions ")]
    keys = {line for r in posts for line in r.lower().split(b"\r\n") if line.startswith(b"idempotency-key:")}
    assert len(dropped) == 1 and len(posts) == 2 and len(keys) == 1
    assert proxy.lost[0].startswith(b"HTTP/1.1 201 ")  # the first attempt did create it
    assert execution.created is True
    assert [e.id for e in client.executions.list()] == [execution.id]


def test_a_control_action_whose_answer_was_lost_is_not_retried(client: Client) -> None:
    execution = client.executions.create(client.agents.create("writer"), input="x", start=False)
    cut, _ = _drop_first(b"/cancel ")
    proxy = CuttingProxy(_port(client.base_url), cut)
    try:
        with Client(proxy.url) as lossy, pytest.raises(ConnectionFailed) as lost:
            lossy.executions.cancel(execution.id)
    finally:
        proxy.close()
    assert lost.value.connected and sum(b"/cancel " in r for r in proxy.requests) == 1
    assert proxy.lost[0].startswith(b"HTTP/1.1 200 ")
    assert client.executions.get(execution.id).state == ExecutionState.CANCELLED  # it happened, once


def test_429_is_retried_after_retry_after_and_raised_as_rate_limited_when_it_persists(
    httpserver: HTTPServer,
) -> None:
    problem = {"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": "slow down"}
    httpserver.expect_ordered_request("/v1/agents").respond_with_json(
        problem, status=429, headers={"Retry-After": "1"}, content_type="application/problem+json"
    )
    httpserver.expect_ordered_request("/v1/agents").respond_with_json(EMPTY_PAGE)
    with Client(httpserver.url_for("/")) as client:
        started = time.monotonic()
        assert client.agents.list_page().total == 0
        assert time.monotonic() - started >= 1.0
    assert len(httpserver.log) == 2
    httpserver.clear()
    httpserver.expect_request("/v1/agents").respond_with_json(
        problem, status=429, headers={"Retry-After": "0"}, content_type="application/problem+json"
    )
    with Client(httpserver.url_for("/"), max_retries=2) as client, pytest.raises(RateLimited) as limited:
        client.agents.list_page()
    assert limited.value.retry_after == 0 and limited.value.detail == "slow down" and len(httpserver.log) == 3


def test_a_spent_token_budget_is_raised_at_once_as_budget_exceeded_even_with_a_short_retry_after(
    httpserver: HTTPServer,
) -> None:
    # A 429 of a spent daily budget lasts until the next UTC midnight, however close that is.
    problem = {
        "type": "https://agentexec.dev/problems/budget-exceeded",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "agent x spent its daily token budget",
        "retry_after": 1,
    }
    httpserver.expect_request("/v1/agents").respond_with_json(
        problem, status=429, headers={"Retry-After": "1"}, content_type="application/problem+json"
    )
    with Client(httpserver.url_for("/")) as client, pytest.raises(BudgetExceeded) as spent:
        client.agents.list_page()
    assert len(httpserver.log) == 1 and spent.value.retry_after == 1
    assert isinstance(spent.value, RateLimited) and str(spent.value) == (
        "Too Many Requests: agent x spent its daily token budget (HTTP 429)"
    )

    async def from_async() -> None:
        async with AsyncClient(httpserver.url_for("/")) as client:
            with pytest.raises(BudgetExceeded):
                await client.agents.list_page()

    asyncio.run(from_async())
    assert len(httpserver.log) == 2


def test_503_is_retried_even_for_a_delete_and_401_and_500_are_raised_at_once(
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_ordered_request(
        "/v1/agents/00000000-0000-0000-0000-000000000001", method="DELETE"
    ).respond_with_data("", status=503, headers={"Retry-After": "0"})
    httpserver.expect_ordered_request(
        "/v1/agents/00000000-0000-0000-0000-000000000001", method="DELETE"
    ).respond_with_data("", status=204)
    with Client(httpserver.url_for("/")) as client:
        client.agents.delete("00000000-0000-0000-0000-000000000001")
    assert len(httpserver.log) == 2
    httpserver.clear()
    httpserver.expect_request("/v1/agents").respond_with_json(
        {"title": "Unauthorized", "status": 401, "detail": "the API key is unknown or revoked"}, status=401
    )
    httpserver.expect_request("/v1/executions").respond_with_data("boom", status=500)
    with Client(httpserver.url_for("/"), api_key="nope") as client:
        with pytest.raises(Unauthorized, match="the API key is unknown or revoked"):
            client.agents.list_page()
        with pytest.raises(ProblemError) as failed:
            client.executions.list_page()
    assert failed.value.status == 500 and type(failed.value) is ProblemError and len(httpserver.log) == 2


def test_a_read_is_retried_after_a_refused_connection_and_then_reported_in_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", max_retries=2) as client,
        pytest.raises(ConnectionFailed) as refused,
    ):
        client.agents.list_page()
    assert str(refused.value) == f"cannot connect to the agentexec API at http://127.0.0.1:{port}"
    assert not refused.value.connected and isinstance(refused.value.__cause__, httpx.ConnectError)


def test_the_client_installs_alone_into_a_fresh_virtualenv_and_calls_the_api(
    api_server, clean_db, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(ROOT / "sdk")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    script = textwrap.dedent(
        f"""
        import importlib.util
        from agentexec_client import Client, __version__
        server = ("flask", "celery", "sqlalchemy", "redis", "app", "api")
        assert not [m for m in server if importlib.util.find_spec(m)], server
        with Client({api_server.url!r}) as client:
            agent = client.agents.create("fresh")
            print(__version__, [a.name for a in client.agents.list()] == ["fresh"], agent.model)
        """
    )
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["1.1.0", "True", "simulated-1"]
