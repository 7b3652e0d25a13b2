"""Agent tasks survive a killed worker (#14): kill -9 after an http tool call finished and before
the next model call; after recovery the tool is not called again and the run completes.

Two `celery -A workers worker` processes and `celery -A workers beat` (the reaper every second,
lease 3 s) on a private PostgreSQL database and redis-server; the http tool is a local server
(TOOL_ALLOWED_HOSTS=127.0.0.1) that counts its calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import close_stack
from tests.e2e.harness import Stack
from tests.tool_server import ToolServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(new_database: Any, redis_server: Any, open_stack: Any) -> Iterator[Stack]:
    s = open_stack(new_database(), redis_server.url, extra_env={"TOOL_ALLOWED_HOSTS": "127.0.0.1"})
    s.start_beat()
    workers = [s.start_worker(name, concurrency=4, wait=False) for name in ("agent-a", "agent-b")]
    for w in workers:
        s.wait_worker_ready(w)
    s.workers = workers  # type: ignore[attr-defined]
    yield s
    close_stack(s)


@pytest.mark.timeout(90)
def test_a_worker_killed_after_a_tool_call_does_not_make_the_call_again(stack: Stack) -> None:
    from app.schemas import AgentCreate, ExecutionCreate

    tool = ToolServer(path="/reverse")
    try:
        svc = stack.service
        agent = svc.create_agent(
            AgentCreate(
                name="agent with an http tool",
                tools=[{"name": "reverse", "kind": "http", "url": tool.url}],  # type: ignore[list-item]
            )
        )
        parameters = {
            "type": "agent",
            "input": "reverse olleh",
            "simulate": {
                "tool_calls": [[{"name": "reverse", "arguments": {"q": "olleh"}}]],
                "latency_ms": 4000,  # each model turn: time enough to kill the worker in the second
                "chunks": 40,
            },
        }
        execution, _ = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters=parameters))

        def between_tool_and_next_turn() -> Any:
            row = stack.rows([execution.id])[execution.id]
            messages = ((row.context or {}).get("agent") or {}).get("messages") or []
            done = row.state == "RUNNING" and [m["role"] for m in messages] == ["user", "assistant", "tool"]
            return row if done else None

        row = wait_for(between_tool_and_next_turn, timeout=30, interval=0.02, what="the tool's result")
        victim = next(w for w in stack.workers if w.hostname == row.worker)  # type: ignore[attr-defined]
        victim.kill9()

        final = stack.wait_states([execution.id], timeout=60, what="the run to finish after the kill")
        done = final[execution.id]
        assert done.state == "COMPLETED", stack.logs()
        assert "reverse=hello" in done.result["output"]
        assert done.result["turns"] == 2 and done.attempt == 2
        assert len(tool.calls()) == 1, tool.calls()  # not called again by the recovered attempt
        assert tool.calls()[0][0] == f"{execution.id}:1:call_1_0"
        history = svc.get_state_history(execution.id)
        assert any("worker lost" in (h.reason or "") for h in history)
    finally:
        tool.close()
