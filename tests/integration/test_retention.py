"""Retention (#16 item 4): finished executions older than RETENTION_DAYS go with their history
and events, in batches; active ones and recent ones stay; the run is on /metrics; the CLI's
`purge --older-than` does the same at once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for

AGE = re.compile(r"^agentexec_retention_last_run_age_seconds [0-9.e+-]+$", re.M)


def _make(svc: Any, session_factory: Any, agent_id: uuid.UUID, state: str, age_days: float) -> uuid.UUID:
    execution = svc.create_execution(
        ExecutionCreate(agent_id=agent_id, parameters={"input": "x"}, start=False)
    )[0]
    finished = state in ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED")
    with session_factory() as s:
        s.execute(
            text(
                "UPDATE executions SET state = :s, created_at = now() - make_interval(days => :d),"
                " completed_at = CASE WHEN :f THEN now() - make_interval(days => :d) END WHERE id = :i"
            ),
            {"s": state, "d": age_days, "f": finished, "i": execution.id},
        )
        s.commit()
    return execution.id


def _left(session_factory: Any, table: str, ids: list[uuid.UUID]) -> int:
    column = "id" if table == "executions" else "execution_id"
    with session_factory() as s:
        return int(
            s.execute(
                text(f"SELECT count(*) FROM {table} WHERE {column} = ANY(:ids)"), {"ids": ids}
            ).scalar_one()
        )


def test_retention_deletes_old_finished_executions_in_batches_and_leaves_the_rest(
    service, session_factory, clean_db
):  # type: ignore[no-untyped-def]
    agent = service.create_agent(AgentCreate(name="retained"))
    old = [_make(service, session_factory, agent.id, s, 40) for s in ("COMPLETED", "FAILED", "TIMED_OUT")] + [
        _make(service, session_factory, agent.id, "CANCELLED", 31) for _ in range(2)
    ]
    recent = [_make(service, session_factory, agent.id, "COMPLETED", 2)]
    active = [
        _make(service, session_factory, agent.id, s, 90) for s in ("RUNNING", "PAUSED", "QUEUED", "PENDING")
    ]
    assert _left(session_factory, "execution_state_history", old) == 5  # each has its creation row
    assert service.purge(30 * 86400, dry_run=True) == 5
    assert _left(session_factory, "executions", old) == 5  # a dry run deletes nothing
    assert service.repository.purge_finished(30 * 86400, batch=2) == 5  # three transactions: 2, 2, 1
    assert _left(session_factory, "executions", old) == 0
    assert _left(session_factory, "execution_state_history", old) == 0
    assert _left(session_factory, "execution_events", old) == 0
    assert _left(session_factory, "executions", recent + active) == 5
    assert service.purge() == 0  # RETENTION_DAYS (30): nothing left that old


def test_the_retention_run_is_counted_on_metrics_and_the_task_uses_retention_days(
    api_app, api, session_factory
):  # type: ignore[no-untyped-def]
    from workers import tasks

    svc = api_app.extensions["agentexec.service"]
    agent = svc.create_agent(AgentCreate(name="metered"))
    for _ in range(3):
        _make(svc, session_factory, agent.id, "COMPLETED", 45)
    metrics = api.get("/metrics").get_data(as_text=True)
    assert "agentexec_retention_deleted_total 0.0" in metrics
    assert not AGE.search(metrics)  # never ran yet: no sample
    assert tasks.purge() == 3  # the beat task: get_service().purge() with RETENTION_DAYS=30

    def scraped() -> str | None:  # /metrics caches the database figures for 2 s
        metrics = api.get("/metrics").get_data(as_text=True)
        return metrics if "agentexec_retention_deleted_total 3.0" in metrics else None

    metrics = wait_for(scraped, timeout=10, what="the retention run on /metrics")
    assert AGE.search(metrics)


def test_purge_from_the_cli_counts_with_dry_run_then_deletes(service, session_factory, clean_db):  # type: ignore[no-untyped-def]
    agent = service.create_agent(AgentCreate(name="purged"))
    ids = [_make(service, session_factory, agent.id, "FAILED", 10) for _ in range(2)]
    keep = [_make(service, session_factory, agent.id, "FAILED", 1)]
    exe = str(Path(sys.executable).parent / "agentexec")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, "purge", *args], capture_output=True, text=True, timeout=60, env=os.environ.copy()
        )

    dry = run("--older-than", "7d", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.strip() == "2" and "dry run" in dry.stderr
    assert _left(session_factory, "executions", ids) == 2
    done = run("--older-than", "7d")
    assert done.returncode == 0 and done.stdout.strip() == "2"
    assert _left(session_factory, "executions", ids) == 0 and _left(session_factory, "executions", keep) == 1
    bad = run("--older-than", "a week")
    assert bad.returncode == 2 and "7d" in bad.stderr


def test_beat_schedules_retention_only_when_retention_days_is_set(monkeypatch):  # type: ignore[no-untyped-def]
    import importlib

    import celeryconfig

    monkeypatch.setenv("RETENTION_DAYS", "0")
    assert "purge-finished-executions" not in importlib.reload(celeryconfig).beat_schedule
    monkeypatch.setenv("RETENTION_DAYS", "7")
    monkeypatch.setenv("RETENTION_INTERVAL", "600")
    entry = importlib.reload(celeryconfig).beat_schedule["purge-finished-executions"]
    assert entry["task"] == "agentexec.purge" and entry["schedule"] == 600.0
    assert entry["options"]["queue"].endswith(".reaper")
    monkeypatch.undo()
    importlib.reload(celeryconfig)
