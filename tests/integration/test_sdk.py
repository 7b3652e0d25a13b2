"""The Python client (`agentexec_client`) against the running API: every method, sync and async.

The API is gunicorn (`api_server`) with the session's real Celery worker; the client
speaks only HTTP to it, as an application would.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentexec_client import (
    AsyncClient,
    BudgetExceeded,
    Client,
    CompletedEvent,
    Conflict,
    ErrorCode,
    EventType,
    ExecutionParameters,
    ExecutionState,
    NotFound,
    OnConflict,
    OutputDeltaEvent,
    PipelineStep,
    ProgressEvent,
    RateLimited,
    SimulateOptions,
    StateChangedEvent,
    TaskBusy,
    ValidationFailed,
    WaitingReason,
    WaitTimeout,
)

from tests.conftest import wait_for
from tests.integration.conftest import start_gunicorn
from tests.processes import free_port, stop_process

S = ExecutionState
PIPELINE = ExecutionParameters(
    type="pipeline",
    input="tides",
    steps=[
        PipelineStep(name="outline", prompt="Outline {input}"),
        PipelineStep(name="draft", prompt="Draft"),
    ],
    simulate=SimulateOptions(latency_ms=300),
)
# Long enough never to finish during a test (a cancel stops it within a second).
SLOW = {"input": "long", "simulate": {"latency_ms": 20000, "chunks": 40}}


@pytest.fixture
def url(api_server, clean_db) -> str:  # type: ignore[no-untyped-def]
    return str(api_server.url)


@pytest.fixture
def client(url: str) -> Any:
    with Client(url) as c:
        yield c


def test_every_method_of_the_client_works_against_the_running_api(client: Client) -> None:
    agents, ex = client.agents, client.executions
    writer = agents.create("writer", system_prompt="Be brief.", parameters={"tone": "dry"})
    other = agents.create("other")
    assert (
        agents.get(writer.id) == writer
        and agents.get("writer") == writer
        and agents.get(str(other.id)) == other
    )
    assert [a.name for a in agents.list(page_size=1)] == ["other", "writer"]
    assert agents.list_page(page=2, page_size=1).model_dump(include={"total", "page"}) == {
        "total": 2,
        "page": 2,
    }
    assert agents.update("writer", system_prompt="Be terse.").system_prompt == "Be terse."

    first = ex.create("writer", input="one", idempotency_key="k-1")
    again = ex.create(writer, input="one", idempotency_key="k-1")
    assert first.created is True and again.created is False and again.id == first.id
    done = ex.wait(first.id, timeout=20)
    assert done.state == S.COMPLETED and done.is_final and "one" in (done.output or "")

    piped = ex.create(writer.id, PIPELINE)
    events = list(ex.stream(piped.id))
    assert isinstance(events[0], StateChangedEvent) and events[0].payload.new_state == S.PENDING
    assert isinstance(events[-1], CompletedEvent) and events[-1].payload.state == S.COMPLETED
    assert any(isinstance(e, ProgressEvent) and e.payload.message == "Step draft" for e in events)
    assert [e.id for e in ex.events(piped.id, page_size=3, types=EventType)] == [e.id for e in events]
    deltas = [e for e in events if isinstance(e, OutputDeltaEvent)]
    for name, checkpoint in ex.get(piped.id).context["steps"].items():  # the output, as it streamed
        assert "".join(d.payload.delta for d in deltas if d.payload.step == name) == checkpoint["output"]
    assert [e.id for e in ex.events(piped.id)] == [e.id for e in events if e not in deltas]
    later = list(ex.stream(piped, last_event_id=events[2].id, types=[EventType.PROGRESS]))
    assert later == [e for e in events[3:] if e.type == "agent.execution.progress"]
    assert [(h.from_state, h.to_state) for h in ex.history(piped.id)] == [
        (None, S.PENDING),
        (S.PENDING, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    assert len(ex.history(piped.id, limit=1)) == 1

    held = ex.create("other", {"input": "later"}, start=False, priority=7, metadata={"m": 1})
    assert held.state == S.PENDING and held.priority == 7 and held.metadata == {"m": 1}
    assert ex.start(held.id, reason="go").state == S.QUEUED
    assert ex.wait(held, timeout=20).state == S.COMPLETED

    failing = ex.create("writer", {"input": "x", "simulate": {"fail_permanently": True}}, max_retries=0)
    assert ex.wait(failing.id, timeout=20).state == S.FAILED
    assert ex.retry(failing.id).attempt == 2
    assert ex.wait(failing.id, timeout=20).state == S.FAILED

    paused = ex.create("writer", PIPELINE.model_copy(update={"simulate": SimulateOptions(latency_ms=600)}))
    wait_for(lambda: ex.get(paused.id).state == S.RUNNING, what="the pipeline to start")
    assert ex.pause(paused.id).state in (S.PAUSING, S.PAUSED)
    wait_for(lambda: ex.get(paused.id).state == S.PAUSED, what="the pipeline to pause")
    assert ex.resume(paused.id).state == S.QUEUED
    assert ex.wait(paused.id, timeout=20).state == S.COMPLETED

    slow = ex.create("other", SLOW)
    with pytest.raises(WaitTimeout):
        ex.wait(slow.id, timeout=0.3)
    assert ex.cancel(slow.id, reason="enough").state in (S.CANCELLING, S.CANCELLED)
    assert ex.wait(slow.id, timeout=20).state == S.CANCELLED

    listed = list(ex.list(page_size=2))
    assert len(listed) == len({e.id for e in listed}) == 6
    assert [e.created_at for e in listed] == sorted((e.created_at for e in listed), reverse=True)
    assert {e.id for e in ex.list(agent="other")} == {held.id, slow.id}
    assert {e.id for e in ex.list(state=["failed", S.CANCELLED])} == {failing.id, slow.id}
    page = ex.list_page(1, 3, state=S.COMPLETED)
    assert page.total == 4 and page.total_exact and len(page.items) == 3

    ex.delete(first.id)
    with pytest.raises(NotFound):
        ex.get(first.id)
    agents.delete("other")
    assert [a.name for a in agents.list()] == ["writer"]


async def until(check: Any, what: str, timeout: float = 20.0) -> None:
    """Await `check()` until it is true or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_the_async_client_has_the_same_surface_and_works_against_the_running_api(url: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(url) as client:
            agents, ex = client.agents, client.executions
            writer = await agents.create("writer")
            other = await agents.create("other", model="simulated-1")
            assert (await agents.get("writer")).id == writer.id == (await agents.get(writer.id)).id
            assert [a.name async for a in agents.list(page_size=1)] == ["other", "writer"]
            assert (await agents.list_page(page_size=1)).total == 2
            assert (await agents.update(other, system_prompt="Hm.")).system_prompt == "Hm."

            first = await ex.create("writer", input="one", idempotency_key="k-1")
            assert (await ex.create("writer", input="one", idempotency_key="k-1")).created is False
            events = [e async for e in ex.stream(first.id)]
            assert isinstance(events[-1], CompletedEvent) and events[-1].payload.state == S.COMPLETED
            assert [e.id async for e in ex.events(first.id, page_size=2, types=EventType)] == [
                e.id for e in events
            ]
            progress = [
                e
                async for e in ex.stream(
                    first, last_event_id=events[0].id, types=["agent.execution.progress"]
                )
            ]
            assert progress == [e for e in events if isinstance(e, ProgressEvent)]
            assert "one" in ((await ex.wait(first.id, timeout=20)).output or "")
            assert [h.to_state for h in await ex.history(first.id)][-1] == S.COMPLETED

            held = await ex.create(other, {"input": "x"}, start=False)
            assert (await ex.start(held.id)).state == S.QUEUED
            assert (await ex.wait(held.id, timeout=20)).state == S.COMPLETED
            failing = await ex.create("writer", {"input": "x", "simulate": {"fail_permanently": True}})
            assert (await ex.wait(failing.id, timeout=20)).state == S.FAILED
            assert (await ex.retry(failing.id)).attempt == 2
            assert (await ex.wait(failing.id, timeout=20)).state == S.FAILED

            paused = await ex.create(
                "writer", PIPELINE.model_copy(update={"simulate": SimulateOptions(latency_ms=600)})
            )
            await until(lambda: _state_is(ex.get(paused.id), S.RUNNING), "the pipeline to start")
            assert (await ex.pause(paused.id)).state in (S.PAUSING, S.PAUSED)
            await until(lambda: _state_is(ex.get(paused.id), S.PAUSED), "the pipeline to pause")
            assert (await ex.resume(paused.id)).state == S.QUEUED
            assert (await ex.wait(paused.id, timeout=20)).state == S.COMPLETED

            slow = await ex.create("other", SLOW)
            with pytest.raises(WaitTimeout):
                await ex.wait(slow.id, timeout=0.3)
            assert (await ex.cancel(slow.id)).state in (S.CANCELLING, S.CANCELLED)
            assert (await ex.wait(slow.id, timeout=20)).state == S.CANCELLED

            listed = [e async for e in ex.list(page_size=2)]
            assert len(listed) == len({e.id for e in listed}) == 5
            assert {e.id async for e in ex.list(agent="other")} == {held.id, slow.id}
            assert (await ex.list_page(1, 2, state=S.COMPLETED)).total == 3
            await ex.delete(first.id)
            with pytest.raises(NotFound):
                await ex.get(first.id)
            await agents.delete("other")
            assert [a.name async for a in agents.list()] == ["writer"]

    asyncio.run(scenario())


async def _state_is(execution: Any, state: ExecutionState) -> bool:
    return bool((await execution).state == state)


def test_api_errors_are_raised_as_typed_problems_with_their_fields(client: Client) -> None:
    client.agents.create("writer")
    with pytest.raises(Conflict) as taken:
        client.agents.create("writer")
    assert taken.value.status == 409 and taken.value.title == "Conflict" and "writer" in taken.value.detail
    with pytest.raises(NotFound) as missing:
        client.executions.get(uuid.uuid4())
    assert missing.value.status == 404 and str(missing.value).endswith("(HTTP 404)")
    with pytest.raises(NotFound, match="no agent named 'nobody'"):
        client.executions.create("nobody", input="x")
    with pytest.raises(ValidationFailed) as invalid:
        client.executions.create("writer", {"input": "x", "simulate": {"latency_ms": -5}})
    problem = invalid.value
    assert problem.status == 422 and problem.title == "Unprocessable Content" and problem.detail
    assert [e.loc for e in problem.errors] == [["body", "parameters", "simulate", "latency_ms"]]
    assert "body.parameters.simulate.latency_ms" in str(problem)


@pytest.mark.parametrize("readme", ["README.md", "sdk/README.md"])
def test_the_python_example_of_the_readme_runs_against_the_api(
    readme: str, url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTEXEC_API_URL", url)  # README.md's Client() reads it; sdk/README.md's names it
    text = (Path(__file__).resolve().parents[2] / readme).read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    code = code.replace("http://127.0.0.1:8000", url).replace('"latency_ms": 1500', '"latency_ms": 50')
    exec(compile(code, readme, "exec"), {})
    printed = capsys.readouterr().out
    assert "COMPLETED" in printed and "100.0%" in printed, printed


def test_an_execution_shows_the_celery_task_id_of_its_current_attempt(client: Client) -> None:
    ex = client.executions
    client.agents.create("writer")
    held = ex.create("writer", input="later", start=False)
    assert held.celery_task_id is None  # never dispatched
    assert ex.start(held.id).celery_task_id == f"{held.id}-1"
    failing = ex.create("writer", {"input": "x", "simulate": {"fail_permanently": True}}, max_retries=0)
    assert failing.celery_task_id == f"{failing.id}-1"
    assert ex.wait(failing.id, timeout=20).celery_task_id == f"{failing.id}-1"
    assert ex.retry(failing.id).celery_task_id == f"{failing.id}-2"
    listed = {e.id: e.celery_task_id for e in ex.list()}
    assert listed[held.id] == f"{held.id}-1" and listed[failing.id] == f"{failing.id}-2"


def test_a_stream_followed_through_a_server_restart_reconnects_and_misses_nothing(
    settings, celery_worker, clean_db, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # The first server is stopped mid-run: its stream ends with `event: reconnect`; the client
    # reopens it with Last-Event-ID on the server started in its place, on the same port.
    port = free_port()
    servers = [start_gunicorn(tmp_path / "first.log", port=port, workers=1, graceful_timeout=15)]
    try:
        with Client(servers[0].url) as client:
            client.agents.create("writer")
            steps = [PipelineStep(name=f"s{i}", prompt="{input}") for i in range(4)]
            params = ExecutionParameters(
                type="pipeline", input="x", steps=steps, simulate=SimulateOptions(latency_ms=800)
            )
            execution = client.executions.create("writer", params)
            received = []
            for event in client.executions.stream(execution.id):
                received.append(event)
                if len(received) == 4:  # running: stop the server, start another in its place
                    servers[0].process.send_signal(signal.SIGTERM)
                    wait_for(
                        lambda: servers[0].process.poll() is not None, timeout=8, what="gunicorn to stop"
                    )
                    servers.append(start_gunicorn(tmp_path / "second.log", port=port, workers=1))
            logged = list(client.executions.events(execution.id, types=EventType))
    finally:
        for server in servers:
            stop_process(server.process)
    assert [e.id for e in received] == [e.id for e in logged], "a gap or a repeat"
    assert isinstance(received[-1], CompletedEvent) and received[-1].payload.state == S.COMPLETED
    assert "Traceback" not in servers[0].log.read_text()


def test_an_agent_carries_its_limits_and_none_in_an_update_removes_only_that_limit(client: Client) -> None:
    agents = client.agents
    made = agents.create("capped", max_concurrency=2, on_conflict="reject", daily_token_budget=1000)
    assert (made.max_concurrency, made.on_conflict, made.daily_token_budget) == (2, "reject", 1000)
    assert made.on_conflict is OnConflict.REJECT and agents.get("capped") == made
    renamed = agents.update(made, name="still-capped", system_prompt=None)
    assert (renamed.name, renamed.max_concurrency, renamed.on_conflict) == ("still-capped", 2, "reject")
    freed = agents.update(made, max_concurrency=None, on_conflict=OnConflict.ENQUEUE)
    assert (freed.max_concurrency, freed.on_conflict, freed.daily_token_budget) == (None, "enqueue", 1000)
    plain = agents.create("plain")
    assert (plain.max_concurrency, plain.on_conflict, plain.daily_token_budget) == (None, None, None)


def test_a_rejected_create_raises_task_busy_naming_the_active_execution_and_error_codes_are_filters(
    client: Client,
) -> None:
    ex = client.executions
    client.agents.create("writer")
    task = uuid.uuid4()
    first = ex.create("writer", SLOW, task_id=task, max_tokens=5000)
    assert (first.max_tokens, first.error_code, first.usage.total_tokens) == (5000, None, 0)
    wait_for(lambda: ex.get(first.id).state == S.RUNNING, what="the first to start")
    with pytest.raises(TaskBusy) as busy:
        ex.create("writer", input="second", task_id=task, on_conflict="reject")
    refused = busy.value
    assert isinstance(refused, Conflict) and refused.status == 409
    assert refused.active_execution_id == first.id and str(first.id) in str(refused)
    assert [e.id for e in ex.list(task_id=task)] == [first.id]

    waiting = ex.create("writer", input="third", task_id=task, on_conflict="enqueue")
    assert (waiting.state, waiting.waiting_reason) == (S.QUEUED, WaitingReason.TASK_BUSY)
    ex.cancel(first.id)
    ended = ex.wait(first.id, timeout=20)
    assert (ended.state, ended.error_code) == (S.CANCELLED, ErrorCode.CANCELLED)
    done = ex.wait(waiting.id, timeout=20)
    assert done.state == S.COMPLETED and done.error_code is None and done.waiting_reason is None
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens > 0
    capped = ex.wait(ex.create("writer", input="a b c d e f", max_tokens=1).id, timeout=20)
    assert (capped.state, capped.error_code) == (S.FAILED, ErrorCode.BUDGET_EXCEEDED)

    assert {e.id for e in ex.list(error_code="cancelled")} == {first.id}
    assert {e.id for e in ex.list(error_code=[ErrorCode.BUDGET_EXCEEDED, "cancelled"])} == {
        first.id,
        capped.id,
    }
    assert ex.list_page(error_code=ErrorCode.INTERRUPTED).items == []
    completed = [e for e in ex.events(first.id) if isinstance(e, CompletedEvent)]
    assert [e.payload.error_code for e in completed] == [ErrorCode.CANCELLED]


def _spend_the_budget(client: Client) -> tuple[Any, Any, Any]:
    """An agent whose daily budget (8 tokens) one run has spent, and another agent that ran once."""
    ex = client.executions
    thrifty = client.agents.create("thrifty", daily_token_budget=8)
    other = client.agents.create("other")
    done = ex.wait(ex.create(thrifty, input="a b c d e f").id, timeout=20)
    assert done.state == S.COMPLETED and done.usage.total_tokens > 8
    assert ex.wait(ex.create(other, input="x").id, timeout=20).state == S.COMPLETED
    return thrifty, other, done


def test_usage_returns_the_tokens_by_agent_by_day_or_both_from_either_client(
    client: Client, url: str
) -> None:
    thrifty, other, done = _spend_the_budget(client)
    by_agent = {item.agent_id: item for item in client.usage()}
    assert set(by_agent) == {thrifty.id, other.id} and by_agent[thrifty.id].day is None
    mine = by_agent[thrifty.id]
    assert (mine.executions, mine.total_tokens) == (1, done.usage.total_tokens)
    assert mine.total_tokens == mine.prompt_tokens + mine.completion_tokens
    today = datetime.now(UTC).date()
    [day] = client.usage(group_by="agent_day", agent="thrifty", created_after=today)
    assert (day.agent_id, day.day, day.total_tokens) == (thrifty.id, today, mine.total_tokens)
    [both] = client.usage(group_by="day", created_before=datetime.now(UTC))
    assert both.agent_id is None and both.total_tokens == sum(i.total_tokens for i in by_agent.values())
    assert client.usage(created_after=today + timedelta(days=1)) == []

    async def from_async() -> list[Any]:
        async with AsyncClient(url) as aclient:
            return await aclient.usage(agent="thrifty")

    assert asyncio.run(from_async()) == [mine]


class CountingTransport(httpx.HTTPTransport):
    """Sends requests as usual and keeps each one's method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        return super().handle_request(request)


def test_a_spent_daily_budget_raises_budget_exceeded_at_once_without_a_retry(url: str) -> None:
    transport = CountingTransport()
    with Client(url, transport=transport) as client:
        thrifty, _, _ = _spend_the_budget(client)
        transport.sent.clear()
        with pytest.raises(BudgetExceeded) as spent:
            client.executions.create(thrifty.id, input="one more")
    assert transport.sent == [("POST", "/v1/executions")], "a spent budget was retried"
    assert isinstance(spent.value, RateLimited) and spent.value.status == 429
    assert spent.value.retry_after is not None and 0 < spent.value.retry_after <= 86400
    assert "daily token budget" in str(spent.value)


def _public_signatures(obj: Any) -> dict[str, list[tuple[str, Any, Any]]]:
    return {
        name: [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
        for name, member in inspect.getmembers(obj, callable)
        if not name.startswith("_") and name not in ("close", "aclose")
    }


def test_the_async_client_mirrors_every_public_method_and_argument_of_the_sync_one(url: str) -> None:
    sync, asyn = Client(url), AsyncClient(url)
    try:
        for path in ("", "agents", "executions"):
            ours = sync if not path else getattr(sync, path)
            theirs = asyn if not path else getattr(asyn, path)
            assert _public_signatures(ours) == _public_signatures(theirs), path or "client"
    finally:
        sync.close()
        asyncio.run(asyn.aclose())


def test_bulk_cancel_and_retry_through_the_client(url: str) -> None:
    with Client(url) as client:
        agent = client.agents.create(f"bulk-sdk-{uuid.uuid4().hex[:8]}")
        held = [
            client.executions.create(agent, input="x", start=False, metadata={"run": "sdk"}) for _ in range(3)
        ]
        dry = client.executions.bulk_cancel(
            filters={"agent_id": agent.id, "metadata": {"run": "sdk"}}, dry_run=True
        )
        assert (dry.matched, dry.changed, dry.skipped) == (3, 3, [])
        done = client.executions.bulk_cancel(ids=[*held, uuid.uuid4()], reason="sdk bulk")
        assert (done.matched, done.changed) == (3, 3) and [s.reason for s in done.skipped] == ["not found"]
        assert {client.executions.get(e).state for e in held} == {"CANCELLED"}
        again = client.executions.bulk_retry(ids=held)
        assert again.changed == 0 and {s.state for s in again.skipped} == {"CANCELLED"}


def test_wait_after_a_retry_waits_for_the_new_attempt_not_the_replayed_end_of_the_old(url: str) -> None:
    with Client(url) as client:
        agent = client.agents.create(f"retried-{uuid.uuid4().hex[:8]}")
        # Attempt 1 fails at once; attempt 2 (the manual retry) runs 1.5 s, then completes.
        params = {"input": "x", "simulate": {"fail_times": 1, "latency_ms": 1500, "chunks": 15}}
        ex = client.executions.create(agent, params, max_retries=0)
        assert client.executions.wait(ex.id, timeout=20).state == "FAILED"
        assert client.executions.retry(ex.id).attempt == 2
        done = client.executions.wait(ex.id, timeout=20)  # the stream replays attempt 1's end first
        assert (done.state, done.attempt) == ("COMPLETED", 2)
