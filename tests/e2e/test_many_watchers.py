"""No client can starve the others: with 200 event streams open from one key and 100 slow
sockets (heads and bodies sent a byte at a time, no key needed), /healthz, GET and POST
from another key still answer within 1 s (gunicorn as the harness starts it: one
api.server.GeventWorker process)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import close_stack
from tests.e2e.harness import Stack
from tests.integration.sse_clients import RawStream, pump

STREAMS = 200
SLOW = 100


@pytest.fixture(scope="module")
def stack(new_database: Any, redis_server: Any, open_stack: Any) -> Iterator[Stack]:
    env = {"AUTH_ENABLED": "true", "RATE_LIMIT": "0", "MAX_STREAMS_PER_KEY": str(STREAMS + 50)}
    s = open_stack(new_database(), redis_server.url, extra_env=env)
    yield s
    close_stack(s)


class SlowSockets:
    """Sockets that send their request a byte every half second, from one thread."""

    def __init__(self, port: int, n: int):
        heads = [
            b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n",
            b"POST /v1/agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n{" + b" " * 400,
        ]
        self.pending = [(socket.create_connection(("127.0.0.1", port)), heads[i % 2]) for i in range(n)]
        self.sent = [0] * n
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._dribble, daemon=True)

    def _dribble(self) -> None:
        while not self.stop.wait(0.5):
            for i, (sock, data) in enumerate(self.pending):
                if self.sent[i] < len(data):
                    try:
                        sock.send(data[self.sent[i] : self.sent[i] + 1])
                        self.sent[i] += 1
                    except OSError:
                        self.sent[i] = len(data)  # the server cut it: as it should

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock, _ in self.pending:
            sock.close()


@pytest.mark.timeout(180)
def test_healthz_get_and_post_from_another_key_answer_within_a_second_while_streams_and_slow_sockets_are_open(
    stack: Stack,
) -> None:
    from app.schemas import ExecutionCreate

    _, base = stack.start_api()
    port = int(base.rsplit(":", 1)[1])
    watcher_key, _ = stack.service.keys.create("default", "watcher")
    probe_key, _ = stack.service.keys.create("default", "probe")
    watched, _ = stack.service.create_execution(
        ExecutionCreate(agent_id=stack.agent.id, parameters={"input": "x"}, start=False)
    )
    path = f"/v1/executions/{watched.id}/events"
    streams = [RawStream(port, path, {"Authorization": f"Bearer {watcher_key}"}) for _ in range(STREAMS)]
    slow = SlowSockets(port, SLOW)
    try:
        pump(streams, lambda: all(s.status == 200 for s in streams), 60, "every stream's head")
        slow.thread.start()
        probe = {"Authorization": f"Bearer {probe_key}"}
        rounds = 0
        with httpx.Client(base_url=base, headers=probe, timeout=1.0) as client:
            # Probe while the slow sockets dribble (until each sent 8 bytes, ~4 s): every answer
            # must come within the client's 1 s timeout, or the test fails.
            while rounds < 3 or min(slow.sent) < 8:
                assert client.get("/healthz").status_code == 200
                assert client.get("/readyz").status_code == 200
                assert client.get(f"/v1/executions/{watched.id}").status_code == 200
                created = client.post(
                    "/v1/executions",
                    json={"agent_id": str(stack.agent.id), "parameters": {"input": "probe"}},
                )
                assert created.status_code == 201, created.text
                rounds += 1
        for s in streams:  # whatever arrived meanwhile (heartbeats), or the end of a cut stream
            s.sock.setblocking(False)
            s.read_some()
        assert not any(s.closed for s in streams)  # the streams were held all along
    finally:
        slow.close()
        for s in streams:
            s.close()
