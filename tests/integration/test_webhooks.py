"""Webhooks end to end on the real services (#16 item 1): an execution's events reach a local
receiver through the real worker, signed per Standard Webhooks (verified with the reference
library); retries keep one webhook-id; lost messages and dead workers lose nothing; failures
disable an endpoint; the fan-out never skips an event that committed late.

`beat` sends the dispatcher's task through Redis every 0.1 s, as `celery beat` does with
WEBHOOK_POLL_INTERVAL; the worker runs it and the send tasks on the webhooks queue.
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import text
from standardwebhooks import Webhook
from werkzeug import Request, Response

from app.webhooks import webhook_queue
from tests.conftest import wait_for
from tests.integration.conftest import Server, wait_finished
from tests.integration.test_readme_blocks import SECTION, section, shell_blocks


class Receiver:
    """A webhook receiver: answers with the scripted statuses first, then 200; records each call."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response:
        with self._lock:
            self.calls.append((dict(request.headers), request.get_data()))
            status = self.script.pop(0) if self.script else 200
        return Response("nope" if status >= 300 else "ok", status=status)


@pytest.fixture(scope="module")
def http_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver(http_server: HTTPServer) -> Iterator[Receiver]:
    rec = Receiver()
    http_server.clear()
    http_server.expect_request("/hook", method="POST").respond_with_handler(rec)
    rec.url = http_server.url_for("/hook")  # type: ignore[attr-defined]
    yield rec
    http_server.clear()


@pytest.fixture
def beat(celery_worker: Any, settings: Any) -> Iterator[None]:
    """The dispatcher's task every 0.1 s through the broker, as beat sends it."""
    from workers.webhooks import dispatch

    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.1):
            dispatch.apply_async(queue=webhook_queue(settings.default_queue), expires=2)

    thread = threading.Thread(target=run, name="test-beat", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.fixture
def worker_webhooks(celery_worker: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The worker's WebhookService; `tune(**settings)` changes its settings for one test."""
    from workers.webhooks import get_webhooks

    webhooks = get_webhooks()

    def tune(**changes: Any) -> None:
        monkeypatch.setattr(webhooks, "settings", webhooks.settings.model_copy(update=changes))

    webhooks.tune = tune
    return webhooks


def run_one(api: Any, agent: dict[str, Any]) -> dict[str, Any]:
    created = api.post("/v1/executions", json={"agent_id": agent["id"], "parameters": {"input": "hello"}})
    assert created.status_code == 201, created.get_json()
    return wait_finished(api, created.get_json()["id"])


def deliveries(api: Any, webhook_id: str) -> list[dict[str, Any]]:
    answer = api.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["items"]


def test_a_receiver_failing_twice_gets_three_signed_attempts_with_one_webhook_id(
    api, api_agent, receiver, beat
):  # type: ignore[no-untyped-def]
    receiver.script = [500, 500]
    hook = api.post("/v1/webhooks", json={"url": receiver.url, "description": "ends"})
    assert hook.status_code == 201, hook.get_json()
    hook = hook.get_json()
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["agent.execution.completed"]
    execution = run_one(api, api_agent)

    done = wait_for(
        lambda: [d for d in deliveries(api, hook["id"]) if d["status"] == "succeeded"],
        timeout=30,
        what="the delivery to succeed on its third attempt",
    )
    (delivery,) = done
    assert (delivery["attempts"], delivery["last_status_code"], delivery["last_error"]) == (3, 200, None)
    assert delivery["event_type"] == "agent.execution.completed" and delivery["next_attempt_at"] is None
    assert len(receiver.calls) == 3
    assert {headers["Webhook-Id"] for headers, _ in receiver.calls} == {delivery["id"]}
    for headers, body in receiver.calls:  # each attempt signed afresh, all verify
        event = Webhook(hook["secret"]).verify(body, headers)
        assert event["type"] == "agent.execution.completed"
        assert event["execution_id"] == execution["id"]
        assert event["payload"]["state"] == "COMPLETED"
        assert set(event) == {"id", "type", "execution_id", "created_at", "payload"}
        assert event["id"] == delivery["event_id"]
    # Only the subscribed type: the run's state changes made no delivery.
    assert len(deliveries(api, hook["id"])) == 1
    assert "secret" not in api.get(f"/v1/webhooks/{hook['id']}").get_json()


def test_redeliver_sends_the_same_webhook_id_again(api, api_agent, receiver, beat):  # type: ignore[no-untyped-def]
    hook = api.post("/v1/webhooks", json={"url": receiver.url}).get_json()
    run_one(api, api_agent)
    first = wait_for(
        lambda: [d for d in deliveries(api, hook["id"]) if d["status"] == "succeeded"], timeout=20
    )[0]
    answer = api.post(f"/v1/webhooks/{hook['id']}/deliveries/{first['id']}/redeliver")
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["status"] == "pending"
    again = wait_for(
        lambda: [d for d in deliveries(api, hook["id"]) if d["status"] == "succeeded" and d["attempts"] == 2],
        timeout=20,
        what="the redelivery",
    )[0]
    assert again["id"] == first["id"]
    assert [h["Webhook-Id"] for h, _ in receiver.calls] == [first["id"], first["id"]]
    assert api.post(f"/v1/webhooks/{hook['id']}/deliveries/{uuid.uuid4()}/redeliver").status_code == 404


def test_claims_whose_messages_were_lost_are_claimed_again_after_their_lease(
    request, api, api_agent, receiver, worker_webhooks
):  # type: ignore[no-untyped-def]
    """As if Redis were emptied (or the worker killed) after the dispatcher claimed a delivery: its
    send task never runs. The row in PostgreSQL is claimed again once the claim's lease runs out,
    and the lost claim's task, should it still arrive, sends nothing."""
    worker_webhooks.tune(webhook_timeout_seconds=0.5)  # a lease of 1.5 s
    hook = api.post("/v1/webhooks", json={"url": receiver.url}).get_json()
    run_one(api, api_agent)
    claims = wait_for(worker_webhooks.dispatch_pass, timeout=20, what="the dispatcher to claim the delivery")
    ((delivery_id, lost_token),) = claims  # ...and its message is lost: nothing sends it
    (row,) = deliveries(api, hook["id"])
    assert (row["status"], row["attempts"]) == ("delivering", 0)

    request.getfixturevalue("beat")
    done = wait_for(
        lambda: [d for d in deliveries(api, hook["id"]) if d["status"] == "succeeded"],
        timeout=20,
        what="the delivery to be claimed again and sent",
    )
    assert done[0]["attempts"] == 1 and len(receiver.calls) == 1
    assert worker_webhooks.send(delivery_id, lost_token) == "not-ours"
    assert len(receiver.calls) == 1


def test_an_endpoint_is_disabled_after_consecutive_failed_deliveries_and_enabling_resets_it(
    api, api_agent, receiver, worker_webhooks, beat
):  # type: ignore[no-untyped-def]
    # The retry window is shorter than the first retry: each delivery fails on its first attempt.
    worker_webhooks.tune(webhook_disable_after=2, webhook_retry_window=0.05)
    receiver.script = [500] * 10
    hook = api.post("/v1/webhooks", json={"url": receiver.url}).get_json()
    run_one(api, api_agent)
    wait_for(
        lambda: api.get(f"/v1/webhooks/{hook['id']}").get_json()["consecutive_failures"] == 1, timeout=20
    )
    run_one(api, api_agent)
    disabled = wait_for(
        lambda: (b := api.get(f"/v1/webhooks/{hook['id']}").get_json())["enabled"] is False and b,
        timeout=20,
        what="the endpoint to be disabled",
    )
    assert disabled["consecutive_failures"] == 2
    assert "2 consecutive failed deliveries" in disabled["disabled_reason"]
    items = deliveries(api, hook["id"])
    assert [(d["status"], d["attempts"], d["last_status_code"]) for d in items] == [("failed", 1, 500)] * 2
    assert items[0]["last_error"] == "HTTP 500"
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'agentexec_webhook_deliveries{status="failed"} 2.0' in metrics
    assert "agentexec_webhooks_disabled 1.0" in metrics

    # While disabled no delivery is made for it; an enabled endpoint shows the event was read.
    witness = api.post("/v1/webhooks", json={"url": receiver.url}).get_json()
    receiver.script = []
    third = run_one(api, api_agent)
    wait_for(lambda: deliveries(api, witness["id"]), timeout=20, what="the witness's delivery")
    assert deliveries(api, witness["id"])[0]["event_id"] > max(d["event_id"] for d in items)
    assert third["state"] == "COMPLETED"
    enabled = api.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True}).get_json()
    assert (enabled["enabled"], enabled["consecutive_failures"], enabled["disabled_reason"]) == (
        True,
        0,
        None,
    )
    assert len(deliveries(api, hook["id"])) == 2


# ------------------------------------------------------------ docs/webhooks.md

ROOT_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("api_server", [{"AUTH_ENABLED": "true"}], indirect=True)
def test_the_webhooks_doc_registers_an_endpoint_that_gets_a_signed_event(
    api_server: Server, service, clean_db, receiver, beat
) -> None:  # type: ignore[no-untyped-def]
    key, _ = service.keys.create("webhooks-doc", "docs/webhooks.md")
    (walkthrough,) = shell_blocks(section((ROOT_DIR / "README.md").read_text(), SECTION))
    (webhooks,) = shell_blocks((ROOT_DIR / "docs" / "webhooks.md").read_text())
    script = "\n".join([walkthrough, webhooks, 'echo "SECRET=$SECRET"'])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTEXEC_")}
    env |= {"AGENTEXEC_API_URL": api_server.url, "AGENTEXEC_API_KEY": key, "HOOK_URL": receiver.url}
    run = subprocess.run(
        ["bash", "-e", "-c", script], cwd=ROOT_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    secret = next(line.split("=", 1)[1] for line in run.stdout.splitlines() if line.startswith("SECRET="))
    assert secret.startswith("whsec_")
    calls = wait_for(
        lambda: [c for c in receiver.calls if b"agent.execution.completed" in c[1]],
        timeout=30,
        what="the doc's run to be delivered",
    )
    event = Webhook(secret).verify(calls[0][1], calls[0][0])
    assert event["type"] == "agent.execution.completed" and event["payload"]["state"] == "COMPLETED"


# ------------------------------------------------------------ the Python client


def test_the_python_client_manages_endpoints_and_reads_their_deliveries(api_app, receiver, beat):  # type: ignore[no-untyped-def]
    import httpx
    from agentexec_client import Client, NotFound, ValidationFailed, WebhookCreated

    with Client("http://api.test", transport=httpx.WSGITransport(app=api_app)) as client:
        hook = client.webhooks.create(receiver.url, description="from the client")
        assert isinstance(hook, WebhookCreated) and hook.secret.startswith("whsec_")
        assert [h.id for h in client.webhooks.list()] == [hook.id]
        agent = client.agents.create("hooked")
        execution = client.executions.create(agent, input="hi")
        wait_for(lambda: client.executions.get(execution.id).state.value == "COMPLETED", timeout=20)
        (done,) = wait_for(
            lambda: [d for d in client.webhooks.deliveries(hook) if d.status == "succeeded"], timeout=20
        )
        assert client.webhooks.redeliver(hook, done).status == "pending"
        wait_for(lambda: client.webhooks.deliveries_page(hook).items[0].attempts == 2, timeout=20)
        changed = client.webhooks.update(hook, events=["agent.execution.progress"], enabled=False)
        assert changed.events == ["agent.execution.progress"] and not changed.enabled
        assert client.webhooks.get(hook.id).disabled_reason == "disabled by the API"
        with pytest.raises(ValidationFailed):
            client.webhooks.create("http://10.0.0.1/")
        client.webhooks.delete(hook)
        with pytest.raises(NotFound):
            client.webhooks.get(hook)


@pytest.mark.parametrize("api_server", [{"AUTH_ENABLED": "true"}], indirect=True)
def test_the_async_client_has_the_same_webhook_methods(api_server: Server, service, clean_db) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import inspect

    from agentexec_client import AsyncClient
    from agentexec_client.webhooks import AsyncWebhooks, Webhooks

    def surface(cls: type) -> set[str]:
        return {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}

    assert surface(AsyncWebhooks) == surface(Webhooks)
    key, _ = service.keys.create("async-hooks", "test")

    async def scenario() -> None:
        async with AsyncClient(api_server.url, api_key=key) as client:
            hook = await client.webhooks.create(
                "https://93.184.216.34/in", events=["agent.execution.completed"]
            )
            assert [h.id async for h in client.webhooks.list()] == [hook.id]
            assert (await client.webhooks.update(hook, description="x")).description == "x"
            assert (await client.webhooks.deliveries_page(hook)).total == 0
            assert [d async for d in client.webhooks.deliveries(hook)] == []
            await client.webhooks.delete(hook)
            assert (await client.webhooks.list_page()).total == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("api_server", [{"AUTH_ENABLED": "true"}], indirect=True)
def test_the_cli_creates_lists_and_redelivers(api_server: Server, service, clean_db, receiver, beat) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from cli.main import app as cli_app

    key, _ = service.keys.create("default", "cli")
    runner = CliRunner()

    def cli(*args: str) -> str:
        done = runner.invoke(
            cli_app, ["--api-url", api_server.url, "--api-key", key, *args], env={"COLUMNS": "200"}
        )
        assert done.exit_code == 0, done.output
        return done.stdout

    hook_id, secret = cli("webhooks", "create", receiver.url, "-d", "cli").split()
    assert secret.startswith("whsec_")
    assert hook_id in cli("webhooks", "list") and "completed" in cli("webhooks", "show", hook_id)
    agent = cli("agents", "create", "cli-hooked").strip()
    cli("submit", agent, "--input", "hi")
    wait_for(lambda: "succeeded" in cli("webhooks", "deliveries", hook_id), timeout=30, what="the delivery")
    (delivery,) = [line.split()[0] for line in cli("webhooks", "deliveries", hook_id).splitlines()[1:]]
    assert (
        Webhook(secret).verify(receiver.calls[0][1], receiver.calls[0][0])["type"]
        == "agent.execution.completed"
    )
    cli("webhooks", "redeliver", hook_id, delivery)
    wait_for(lambda: len(receiver.calls) == 2, timeout=20, what="the redelivery")
    assert "no: disabled by the API" in cli("webhooks", "update", hook_id, "--disable")
    cli("webhooks", "delete", hook_id)
    assert (
        "no webhooks"
        in runner.invoke(cli_app, ["--api-url", api_server.url, "--api-key", key, "webhooks", "list"]).output
    )


# ------------------------------------------------------------ the fan-out itself

PROGRESS = "agent.execution.progress"


def make_hook(
    session_factory: Any, tenant: str = "default", events: str = "agent.execution.progress"
) -> uuid.UUID:
    hook_id = uuid.uuid4()
    with session_factory() as s:
        s.execute(
            text(
                "INSERT INTO webhooks (id, tenant, url, events, secret, created_at)"
                " VALUES (:i, :t, 'http://127.0.0.1:9/', ARRAY[:e], 'whsec_eA==', now() - interval '1 hour')"
            ),
            {"i": hook_id, "t": tenant, "e": events},
        )
        s.commit()
    return hook_id


def log_event(conn: Any, execution_id: uuid.UUID, kind: str = PROGRESS) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO execution_events (execution_id, type, payload)"
                " VALUES (:x, :k, '{}') RETURNING id"
            ),
            {"x": execution_id, "k": kind},
        ).scalar_one()
    )


def delivered_events(session_factory: Any, hook_id: uuid.UUID) -> list[int]:
    with session_factory() as s:
        rows = s.execute(
            text("SELECT event_id FROM webhook_deliveries WHERE webhook_id = :w ORDER BY event_id"),
            {"w": hook_id},
        )
        return [int(r[0]) for r in rows]


@pytest.fixture
def store(session_factory: Any, clean_db: Any) -> Any:
    from app.webhooks.store import WebhookStore

    return WebhookStore(session_factory)


@pytest.fixture
def execution_id(service: Any) -> uuid.UUID:
    from app.schemas import AgentCreate, ExecutionCreate

    agent = service.create_agent(AgentCreate(name=f"hooked-{uuid.uuid4().hex[:6]}"))
    execution, _ = service.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False)
    )
    return execution.id


def test_an_event_whose_transaction_commits_after_a_later_event_is_not_skipped(
    store, session_factory, execution_id
):  # type: ignore[no-untyped-def]
    """An id cursor would skip it: the first transaction takes the lower id, the second commits
    first and is read, then the first commits. The (txid, id) order with the xmin horizon waits."""
    hook = make_hook(session_factory)
    engine = session_factory.kw["bind"]
    with engine.connect() as slow:
        early = log_event(slow, execution_id)  # the lower id, not committed yet
        with engine.begin() as fast:
            late = log_event(fast, execution_id)
        assert late > early
        store.fan_out()
        assert delivered_events(session_factory, hook) == []  # nothing past the open transaction
        slow.commit()
    wait_for(lambda: store.fan_out() and delivered_events(session_factory, hook) == [early, late], timeout=20)


def test_two_dispatchers_at_once_make_each_delivery_once(store, session_factory, execution_id):  # type: ignore[no-untyped-def]
    hooks = [make_hook(session_factory) for _ in range(3)]
    other_tenant = make_hook(session_factory, tenant="someone-else")
    completed_only = make_hook(session_factory, events="agent.execution.completed")
    engine = session_factory.kw["bind"]
    with engine.begin() as conn:
        events = [log_event(conn, execution_id) for _ in range(50)]
    barrier = threading.Barrier(4)

    def dispatcher() -> None:
        barrier.wait()
        for _ in range(20):
            store.fan_out(batch=7)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(
        lambda: (
            store.fan_out() is not None and all(delivered_events(session_factory, h) == events for h in hooks)
        ),
        timeout=20,
        what="every event fanned out to every endpoint",
    )
    assert delivered_events(session_factory, other_tenant) == []  # the tenant's own endpoints only
    assert delivered_events(session_factory, completed_only) == []  # the subscribed types only


def test_retention_deletes_old_executions_with_their_deliveries(
    service, store, session_factory, execution_id
):  # type: ignore[no-untyped-def]
    hook = make_hook(session_factory)
    engine = session_factory.kw["bind"]
    with engine.begin() as conn:
        log_event(conn, execution_id)
    wait_for(lambda: store.fan_out() and delivered_events(session_factory, hook), timeout=20)
    with session_factory() as s:
        s.execute(
            text(
                "UPDATE executions SET state = 'COMPLETED', completed_at = now() - interval '40 days'"
                " WHERE id = :i"
            ),
            {"i": execution_id},
        )
        s.commit()
    assert service.purge(30 * 86400) == 1
    assert delivered_events(session_factory, hook) == []


def test_with_no_endpoint_the_dispatcher_passes_events_over_without_reading_them(
    store, session_factory, execution_id
):  # type: ignore[no-untyped-def]
    engine = session_factory.kw["bind"]
    with engine.begin() as conn:
        before = log_event(conn, execution_id)
    wait_for(lambda: store.fan_out() == (0, 0) and cursor_past(session_factory, before), timeout=20)
    hook = make_hook(session_factory)
    with engine.begin() as conn:
        after = log_event(conn, execution_id)
    wait_for(lambda: store.fan_out() and delivered_events(session_factory, hook) == [after], timeout=20)


def cursor_past(session_factory: Any, event_id: int) -> bool:
    with session_factory() as s:
        row = s.execute(text("SELECT last_txid, last_event_id FROM webhook_cursor")).one()
        txid = s.execute(
            text("SELECT txid FROM execution_events WHERE id = :i"), {"i": event_id}
        ).scalar_one()
    return bool((row[0], row[1]) >= (txid, event_id))


def test_claims_keep_at_most_the_in_flight_caps_per_endpoint_and_in_all(store, session_factory, execution_id):  # type: ignore[no-untyped-def]
    hooks = [make_hook(session_factory) for _ in range(3)]
    engine = session_factory.kw["bind"]
    with engine.begin() as conn:
        for _ in range(5):
            log_event(conn, execution_id)
    wait_for(lambda: store.fan_out() and len(delivered_events(session_factory, hooks[2])) == 5, timeout=20)

    def in_flight() -> dict[uuid.UUID, int]:
        with session_factory() as s:
            rows = s.execute(
                text(
                    "SELECT webhook_id, count(*) FROM webhook_deliveries"
                    " WHERE status = 'delivering' GROUP BY webhook_id"
                )
            )
            return {r[0]: int(r[1]) for r in rows}

    assert len(store.claim_due(100, 60, total=7, per_endpoint=2)) == 6  # 2 per endpoint
    assert sorted(in_flight().values()) == [2, 2, 2]
    assert len(store.claim_due(100, 60, total=7, per_endpoint=3)) == 1  # the total: 7
    assert sum(in_flight().values()) == 7
    assert store.claim_due(100, 60, total=7, per_endpoint=5) == []
    assert len(store.claim_due(100, 60, total=100, per_endpoint=5)) == 8  # the remaining 15 - 7
    assert sorted(in_flight().values()) == [5, 5, 5]
