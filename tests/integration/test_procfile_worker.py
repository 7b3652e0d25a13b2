"""A worker started exactly as the Procfile starts it runs 100 executions to COMPLETED."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from sqlalchemy import func, select

from app.models import ExecutionStateHistory
from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for
from tests.processes import start_procfile_process, stop_process


def test_the_procfile_worker_runs_100_executions_to_completed(
    settings, session_factory, clean_db, capsys, tmp_path: Path
):  # type: ignore[no-untyped-def]
    from app.bootstrap import build_service
    from workers.background import BackgroundTaskManager
    from workers.celery_app import celery_app

    worker = start_procfile_process(
        "worker",
        {"CELERY_QUEUES": settings.default_queue, "WORKER_CONCURRENCY": "16"},
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
