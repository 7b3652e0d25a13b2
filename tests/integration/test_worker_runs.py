"""Executions run on a real Celery worker against real PostgreSQL and Redis."""

from __future__ import annotations

from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for


def _finished(service, execution_id):  # type: ignore[no-untyped-def]
    row = service.get_execution(execution_id)
    return row if row.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") else None


def test_a_standard_execution_completes_on_a_real_worker(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="std", system_prompt="Be brief."))
    execution, _ = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "hello"}))
    done = wait_for(lambda: _finished(svc, execution.id), what="completion")
    assert done.state == "COMPLETED"
    assert "hello" in done.result["output"]
    assert done.result["usage"]["model_calls"] == 1
    history = [(h.from_state, h.to_state) for h in svc.get_state_history(execution.id, 50)]
    assert history == [(None, "PENDING"), ("PENDING", "QUEUED"), ("QUEUED", "RUNNING"),
                       ("RUNNING", "COMPLETED")]
