"""The Python client (`agentexec_client`) against the running API: every method, sync and async.

The API is gunicorn (`api_server`) with the session's real Celery worker; the client
speaks only HTTP to it, as an application would.
"""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from agentexec_client import (
    AsyncClient,
    Client,
    CompletedEvent,
    Conflict,
    EventType,
    ExecutionParameters,
    ExecutionState,
    NotFound,
    PipelineStep,
    ProgressEvent,
    SimulateOptions,
    StateChangedEvent,
    ValidationFailed,
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
    assert [e.id for e in ex.events(piped.id, page_size=3)] == [e.id for e in events]
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
            assert [e.id async for e in ex.events(first.id, page_size=2)] == [e.id for e in events]
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
    readme: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
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
            logged = list(client.executions.events(execution.id))
    finally:
        for server in servers:
            stop_process(server.process)
    assert [e.id for e in received] == [e.id for e in logged], "a gap or a repeat"
    assert isinstance(received[-1], CompletedEvent) and received[-1].payload.state == S.COMPLETED
    assert "Traceback" not in servers[0].log.read_text()
