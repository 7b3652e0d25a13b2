"""A worker started exactly as the Procfile starts it runs 100 executions to COMPLETED; the
Procfile's defaults keep each stack's runtime files and node names apart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from app.models import ExecutionStateHistory
from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for
from tests.processes import procfile_command, start_procfile_process, stop_process


def _expanded(name: str, **env: str) -> str:
    """The Procfile line as the shell expands it, WORKER_NAME and BEAT_SCHEDULE unset."""
    base = {k: v for k, v in os.environ.items() if k not in ("WORKER_NAME", "BEAT_SCHEDULE", "PORT")}
    done = subprocess.run(
        ["bash", "-c", f"echo {procfile_command(name)}"],
        env=base | {"FLOWER_BASIC_AUTH": "a:b"} | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_the_procfile_keeps_runtime_files_in_var_and_names_the_worker_after_the_stacks_port() -> None:
    assert "--hostname agentexec-8123@%h" in _expanded("worker", PORT="8123")
    assert "--hostname ops-1@%h" in _expanded("worker", PORT="8123", WORKER_NAME="ops-1")
    assert "--schedule var/celerybeat-schedule" in _expanded("beat")
    assert "--control-socket var/gunicorn-8123.ctl" in _expanded("web", PORT="8123")
    assert "/tmp" not in (Path(__file__).parents[2] / "Procfile").read_text()


def test_the_procfile_worker_runs_100_executions_to_completed(
    settings, session_factory, clean_db, capsys, tmp_path: Path
):  # type: ignore[no-untyped-def]
    from app.bootstrap import build_service
    from workers.background import BackgroundTaskManager
    from workers.celery_app import celery_app

    worker = start_procfile_process(
        "worker",
        {
            "CELERY_QUEUES": settings.default_queue,
            "WORKER_CONCURRENCY": "16",
            "WORKER_NAME": f"procfile-{settings.default_queue}",
        },
        tmp_path / "worker.log",
    )
    try:
        svc = build_service(
            background_tasks=BackgroundTaskManager(celery_app),
            settings=settings,
            session_factory=session_factory,
        )
        agent = svc.create_agent(AgentCreate(name="hundred"))
        started = time.perf_counter()
        ids = [
            svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": f"n{i}"}))[0].id
            for i in range(100)
        ]

        def all_completed() -> bool:
            items, total = svc.list_executions({"state": ["COMPLETED"]}, {"page_size": 200})
            return total == 100

        wait_for(all_completed, timeout=120, interval=0.2, what="100 executions COMPLETED")
        elapsed = time.perf_counter() - started
        with session_factory() as s:
            finishes = s.execute(
                select(ExecutionStateHistory.execution_id, func.count())
                .where(
                    ExecutionStateHistory.execution_id.in_(ids),
                    ExecutionStateHistory.from_state == "RUNNING",
                    ExecutionStateHistory.to_state == "COMPLETED",
                )
                .group_by(ExecutionStateHistory.execution_id)
            ).all()
        assert len(finishes) == 100 and all(count == 1 for _, count in finishes)
        with capsys.disabled():
            print(
                f"\n[procfile worker] 100 executions submitted and COMPLETED in {elapsed:.2f} s "
                f"({100 / elapsed:.1f}/s, threads pool, concurrency 16)"
            )
    finally:
        stop_process(worker)
    assert worker.returncode in (0, -signal.SIGTERM), (tmp_path / "worker.log").read_text()[-2000:]
