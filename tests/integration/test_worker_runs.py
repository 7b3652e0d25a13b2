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
    assert history == [
        (None, "PENDING"),
        ("PENDING", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]


def _history(svc, execution_id):  # type: ignore[no-untyped-def]
    return [(h.from_state, h.to_state) for h in svc.get_state_history(execution_id, 100)]


def test_a_three_step_pipeline_checkpoints_every_step_and_progress_rises_to_100(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="pipe"))
    steps = [
        {"name": "outline", "prompt": "Outline {input}"},
        {"name": "draft", "prompt": "Draft from {steps.outline}"},
        {"name": "polish", "prompt": "Polish {steps.draft}"},
    ]
    execution, _ = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"type": "pipeline", "input": "a poem", "steps": steps})
    )
    done = wait_for(lambda: _finished(svc, execution.id), what="pipeline completion")
    assert done.state == "COMPLETED"
    assert set(done.context["steps"]) == {"outline", "draft", "polish"}
    assert all(cp["attempt"] == 1 and cp["finished_at"] for cp in done.context["steps"].values())
    assert done.result["steps"]["polish"] == done.result["output"]
    assert "Outline a poem" in done.result["steps"]["outline"]
    assert done.result["usage"]["model_calls"] == 3
    progress = [e.payload for e in svc.get_events(execution.id) if e.type == "agent.execution.progress"]
    percentages = [p["percentage"] for p in progress]
    assert percentages == sorted(percentages) and percentages[-1] == 100
    assert [p["message"] for p in progress] == [
        "Prepare input",
        "Step outline",
        "Step draft",
        "Step polish",
        "Finalize",
    ]


def test_transient_failures_are_retried_with_a_new_attempt_until_success(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="flaky"))
    execution, _ = svc.create_execution(
        ExecutionCreate(
            agent_id=agent.id, parameters={"input": "x", "simulate": {"fail_times": 2}}, max_retries=3
        )
    )
    done = wait_for(lambda: _finished(svc, execution.id), what="completion after retries")
    assert done.state == "COMPLETED" and done.attempt == 3
    assert _history(svc, execution.id)[1:] == [
        ("PENDING", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]


def test_retries_stop_when_max_retries_is_spent(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="flakier"))
    execution, _ = svc.create_execution(
        ExecutionCreate(
            agent_id=agent.id, parameters={"input": "x", "simulate": {"fail_times": 5}}, max_retries=1
        )
    )
    done = wait_for(lambda: _finished(svc, execution.id), what="failure after retries")
    assert done.state == "FAILED" and done.attempt == 2
    assert "transient" in done.error_message and done.error_code == "retries_exhausted"


def test_a_permanent_failure_fails_at_once_with_its_error(worker_service):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="broken"))
    execution, _ = svc.create_execution(
        ExecutionCreate(
            agent_id=agent.id,
            parameters={"input": "x", "simulate": {"fail_permanently": True}},
            max_retries=3,
        )
    )
    done = wait_for(lambda: _finished(svc, execution.id), what="failure")
    assert done.state == "FAILED" and done.attempt == 1
    assert done.error_message == "simulated permanent model failure"
    completed = [e.payload for e in svc.get_events(execution.id) if e.type == "agent.execution.completed"]
    assert completed == [completed[0]] and completed[0]["error_message"] == done.error_message
    assert done.error_code == completed[0]["error_code"] == "model_error_permanent"


def test_an_execution_whose_agent_vanished_fails_with_a_clear_error(worker_service, session_factory):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="vanishing"))
    execution, _ = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False)
    )
    with session_factory() as s:  # bypass the foreign key, as a restore from an old backup could
        s.execute(text("SET LOCAL session_replication_role = replica"))
        s.execute(text("DELETE FROM agents WHERE id = :id"), {"id": agent.id})
        s.commit()
    svc.start_execution(execution.id)
    done = wait_for(lambda: _finished(svc, execution.id), what="failure")
    assert done.state == "FAILED"
    assert done.error_message == f"agent {agent.id} not found" and done.error_code == "agent_not_found"


def test_the_same_attempt_delivered_twice_runs_once(worker_service, celery_app, settings):  # type: ignore[no-untyped-def]
    svc = worker_service
    agent = svc.create_agent(AgentCreate(name="dup"))
    execution, _ = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x", "simulate": {"latency_ms": 300}})
    )
    for _ in range(2):  # the broker redelivers the same message
        celery_app.send_task(
            "agentexec.run_execution", args=[str(execution.id), 1], queue=settings.default_queue
        )
    done = wait_for(lambda: _finished(svc, execution.id), what="completion")
    assert done.state == "COMPLETED" and done.result["usage"]["model_calls"] == 1
    assert _history(svc, execution.id).count(("QUEUED", "RUNNING")) == 1
    assert [e.type for e in svc.get_events(execution.id)].count("agent.execution.completed") == 1
