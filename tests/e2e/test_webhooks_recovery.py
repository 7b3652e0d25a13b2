"""Webhook deliveries survive a worker killed mid-attempt and an emptied Redis (#16 item 1).

Real processes as the Procfile starts them: `celery beat` sends the dispatcher every 0.2 s, a
`celery worker` consumes the stack's queue and (by itself) its webhooks queue. This module owns
its redis-server, so it may FLUSHALL it. The receiver holds the first attempt open while the
worker making it is killed -9 and Redis is emptied; a new worker, after the dead claim's lease,
delivers the same event with the same webhook-id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import RedisServer, Stack

pytestmark = pytest.mark.e2e
TIMEOUT = 4  # WEBHOOK_TIMEOUT_SECONDS: a claim's lease is 3 x this


@pytest.fixture(scope="module")
def own_redis(e2e_workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(e2e_workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(new_database: Any, own_redis: RedisServer, open_stack: Any) -> Iterator[Stack]:
    s = open_stack(
        new_database(),
        own_redis.url,
        extra_env={
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "WEBHOOK_POLL_INTERVAL": "0.2",
            "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
            "WEBHOOK_RETRY_BASE": "0.2",
        },
    )
    s.start_beat()
    yield s
    close_stack(s)


@pytest.fixture
def receiver() -> Iterator[Any]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    calls: list[tuple[dict[str, str], bytes]] = []
    release = threading.Event()

    def handle(request: Request) -> Response:
        calls.append((dict(request.headers), request.get_data()))
        if len(calls) == 1:
            release.wait(30)  # the first attempt hangs until the test lets it go
        return Response("ok")

    server.expect_request("/hook", method="POST").respond_with_handler(handle)
    server.calls, server.release = calls, release  # type: ignore[attr-defined]
    yield server
    release.set()
    server.clear()
    server.stop()


@pytest.mark.timeout(120)
def test_a_delivery_survives_its_worker_killed_mid_attempt_and_redis_emptied(
    stack: Stack, own_redis: RedisServer, receiver: Any
) -> None:
    from app.config import Settings
    from app.webhooks.schemas import WebhookCreate
    from app.webhooks.service import build_webhooks

    settings = Settings(database_url=stack.service.settings.database_url, webhook_allowed_hosts="127.0.0.1")
    webhooks = build_webhooks(stack.service.repository.session_factory, settings)
    hook = webhooks.create(WebhookCreate(url=receiver.url_for("/hook")), tenant=stack.agent.tenant)

    first = stack.start_worker("hook-w1", concurrency=4)
    execution = stack.submit({"type": "standard", "input": "call me back"})
    stack.wait_states([execution.id], timeout=30, what="the execution to finish")
    wait_for(lambda: receiver.calls, timeout=30, what="the first attempt to reach the receiver")
    first.kill9()  # mid-attempt: the receiver still holds the request open
    own_redis.flushall()  # and every queued message is gone
    receiver.release.set()

    from app.schemas import Pagination

    def delivered() -> Any:
        rows, _ = webhooks.deliveries(hook.id, Pagination(), tenant=hook.tenant)
        return [r for r in rows if r.status == "succeeded"]

    second = stack.start_worker("hook-w2", concurrency=4)
    try:
        (delivery,) = wait_for(delivered, timeout=60, what="the delivery after the lease ran out")
    finally:
        second.stop(grace=2)
    assert len(receiver.calls) >= 2
    assert {headers["Webhook-Id"] for headers, _ in receiver.calls} == {str(delivery.id)}
    for headers, body in receiver.calls:
        event = Webhook(hook.secret).verify(body, headers)
        assert event["execution_id"] == str(execution.id) and event["type"] == "agent.execution.completed"
    # The killed attempt was never recorded; the one that succeeded was.
    assert (delivery.attempts, delivery.last_status_code) == (1, 200)
