"""Flower, started as the Procfile starts it, watches a Procfile worker behind basic auth."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for
from tests.processes import free_port, procfile_command, start_procfile_process, stop_process


@pytest.fixture
def flower_stack(settings, session_factory, clean_db, tmp_path: Path) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """A Procfile worker on a private queue, and Flower on a free port with fresh credentials."""
    from app.bootstrap import build_service
    from workers.background import BackgroundTaskManager
    from workers.celery_app import celery_app

    queue = f"test-flower-{secrets.token_hex(4)}"
    node = f"flower-test-{secrets.token_hex(4)}"
    port = free_port()
    auth = ("ops", secrets.token_urlsafe(12))
    worker = start_procfile_process(
        "worker",
        {"CELERY_QUEUES": queue, "WORKER_CONCURRENCY": "2", "LOG_LEVEL": "WARNING", "WORKER_NAME": node},
        tmp_path / "worker.log",
    )
    flower = start_procfile_process(
        "flower",
        {"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": f"{auth[0]}:{auth[1]}"},
        tmp_path / "flower.log",
    )
    svc = build_service(
        background_tasks=BackgroundTaskManager(celery_app), settings=settings, session_factory=session_factory
    )
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "auth": auth,
            "queue": queue,
            "node": node,
            "service": svc,
            "worker": worker,
            "logs": tmp_path,
        }
    finally:
        stop_process(flower)
        stop_process(worker)
        if svc.control_hub is not None:
            svc.control_hub.stop()


def _get(stack: dict[str, Any], path: str, auth: Any = "default", **params: Any) -> httpx.Response:
    try:
        return httpx.get(
            stack["url"] + path, params=params, timeout=10, auth=stack["auth"] if auth == "default" else auth
        )
    except httpx.TransportError:
        return httpx.Response(599)


def _alive(stack: dict[str, Any]) -> str | None:
    """Our worker's node name, once Flower's event stream says it is alive."""
    response = _get(stack, "/api/workers", status="true")
    if response.status_code != 200:
        return None
    return next(
        (name for name, alive in response.json().items() if alive and name.startswith(stack["node"] + "@")),
        None,
    )


def test_flower_lists_the_worker_and_its_run_execution_tasks_with_credentials_only(flower_stack):  # type: ignore[no-untyped-def]
    stack = flower_stack
    wait_for(
        lambda: _get(stack, "/healthcheck", auth=None).status_code == 200, timeout=30, what="Flower to answer"
    )
    assert _get(stack, "/api/workers", auth=None).status_code == 401
    assert _get(stack, "/api/workers", auth=("ops", "wrong")).status_code == 401
    assert _get(stack, "/api/tasks", auth=None).status_code == 401

    name = wait_for(
        lambda: _alive(stack), timeout=30, interval=0.3, what="Flower to see the Procfile worker alive"
    )

    def inspected() -> dict[str, Any] | None:
        # One inspect broadcast may miss a busy worker's reply (Flower waits 1 s): ask again.
        response = _get(stack, "/api/workers", refresh="true")
        return response.json() if response.status_code == 200 and name in response.json() else None

    workers = wait_for(inspected, timeout=30, interval=0.3, what="Flower's inspect to reach the worker")
    assert stack["queue"] in [q["name"] for q in workers[name]["active_queues"]]
    assert "agentexec.run_execution" in workers[name]["registered"]

    svc = stack["service"]
    agent = svc.create_agent(AgentCreate(name="flowered"))
    ids = [
        svc.create_execution(
            ExecutionCreate(agent_id=agent.id, queue=stack["queue"], parameters={"input": f"f{i}"})
        )[0].id
        for i in range(3)
    ]
    task_ids = {f"{i}-1" for i in ids}

    def succeeded_in_flower() -> dict[str, Any] | None:
        response = _get(stack, "/api/tasks", taskname="agentexec.run_execution")
        tasks = response.json() if response.status_code == 200 else {}
        done = {tid: t for tid, t in tasks.items() if tid in task_ids and t.get("state") == "SUCCESS"}
        return tasks if len(done) == len(task_ids) else None

    tasks = wait_for(
        succeeded_in_flower,
        timeout=30,
        interval=0.3,
        what="Flower to list the three run_execution tasks as succeeded",
    )
    for tid in task_ids:
        assert tasks[tid]["name"] == "agentexec.run_execution"
        assert tasks[tid]["worker"] == name
    assert {svc.get_execution(i).state for i in ids} == {"COMPLETED"}


def test_flower_shows_failed_and_timed_out_runs_as_failures_cancelled_as_revoked_and_no_reaper_tasks(  # type: ignore[no-untyped-def]
    flower_stack, settings, tmp_path: Path
):
    stack = flower_stack
    # A beat of this test's stack: it sends the reaper's task twice a second.
    beat = start_procfile_process(
        "beat",
        {"REAPER_INTERVAL": "0.5", "BEAT_SCHEDULE": str(tmp_path / "beat-schedule"), "LOG_LEVEL": "WARNING"},
        tmp_path / "beat.log",
    )
    try:
        wait_for(
            lambda: _get(stack, "/healthcheck", auth=None).status_code == 200,
            timeout=30,
            what="Flower to answer",
        )
        wait_for(lambda: _alive(stack), timeout=30, interval=0.3, what="Flower to see the worker alive")
        svc = stack["service"]
        agent = svc.create_agent(AgentCreate(name="flower-failures"))

        def create(**body: Any) -> str:
            return str(
                svc.create_execution(ExecutionCreate(agent_id=agent.id, queue=stack["queue"], **body))[0].id
            )

        failed = create(parameters={"input": "x", "simulate": {"fail_permanently": True}})
        timed_out = create(parameters={"input": "x", "simulate": {"latency_ms": 5000}}, timeout_seconds=1)
        cancelled = create(parameters={"input": "x", "simulate": {"latency_ms": 20000, "chunks": 200}})
        wait_for(
            lambda: svc.get_execution(uuid.UUID(cancelled)).state == "RUNNING",
            timeout=30,
            what="the slow execution to run",
        )
        # The reaper runs on the worker (a pass in the last second) before the cancel, whose
        # REVOKED event comes after: Flower has seen everything the reaper's tasks would send.
        wait_for(
            lambda: (svc.repository.reaper_status() or (9.0, {}))[0] < 1.0,
            timeout=30,
            interval=0.2,
            what="beat's reaper task to run on the worker",
        )
        svc.cancel_execution(uuid.UUID(cancelled), reason="flower test")
        wanted = {f"{failed}-1": "FAILURE", f"{timed_out}-1": "FAILURE", f"{cancelled}-1": "REVOKED"}

        def shown() -> dict[str, Any] | None:
            response = _get(stack, "/api/tasks", taskname="agentexec.run_execution")
            tasks = response.json() if response.status_code == 200 else {}
            states = {tid: tasks.get(tid, {}).get("state") for tid in wanted}
            return tasks if states == wanted else None

        tasks = wait_for(shown, timeout=40, interval=0.3, what=f"Flower to show {wanted}")
        assert svc.get_execution(uuid.UUID(failed)).state == "FAILED"
        assert svc.get_execution(uuid.UUID(timed_out)).state == "TIMED_OUT"
        assert svc.get_execution(uuid.UUID(cancelled)).state == "CANCELLED"
        assert "simulated permanent model failure" in tasks[f"{failed}-1"]["exception"]
        assert "FAILED" in tasks[f"{failed}-1"]["exception"]
        assert "TIMED_OUT" in tasks[f"{timed_out}-1"]["exception"]

        everything = _get(stack, "/api/tasks").json()  # the reaper's tasks send no events
        assert not [t for t in everything.values() if t.get("name") == "agentexec.reap"]
    finally:
        stop_process(beat)


def test_the_procfile_flower_line_refuses_to_start_without_credentials():
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    # `echo` instead of exec: the expansion alone must fail, before anything would start.
    proc = subprocess.run(
        ["bash", "-c", f"echo {procfile_command('flower')}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode != 0
    assert "FLOWER_BASIC_AUTH" in proc.stderr
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in procfile_command("flower")
