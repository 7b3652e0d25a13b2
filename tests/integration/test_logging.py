"""Structured logs: a worker started as in the Procfile writes JSON lines that carry the run's ids."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import ROOT, wait_for
from tests.processes import start_procfile_process, stop_process


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a log file that are JSON objects."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _run_script(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


_SCRIPT = """
import logging, structlog
from app.config import Settings
from app.logging import bind_log_context, configure_logging
configure_logging(Settings())
structlog.contextvars.bind_contextvars(stale="from an earlier request")
bind_log_context(execution_id="e-1", attempt=2, agent_id="a-1", task_id=None)
log = structlog.get_logger("agentexec.test")
log.info("model called", api_key="sk-canary", prompt="prompt-canary", result="result-canary", tokens=3)
logging.getLogger("celery.worker").warning("a stdlib line")
log.debug("debug detail", prompt="debug-canary")
"""


def test_json_logs_carry_the_bound_run_context_and_redact_keys_prompts_and_results():
    proc = _run_script(_SCRIPT, LOG_FORMAT="json", LOG_LEVEL="INFO")
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["model called", "a stdlib line"]
    for line in lines:
        assert (line["execution_id"], line["attempt"], line["agent_id"]) == ("e-1", 2, "a-1")
        assert line["timestamp"] and line["level"] in ("info", "warning")
        assert "stale" not in line and "task_id" not in line
    assert lines[0]["tokens"] == 3
    assert lines[0]["api_key"] == lines[0]["prompt"] == lines[0]["result"] == "[redacted]"
    assert "canary" not in proc.stderr


def test_debug_level_shows_prompt_text_and_console_format_is_readable_text():
    proc = _run_script(_SCRIPT, LOG_FORMAT="console", LOG_LEVEL="DEBUG")
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and not any(line.startswith("{") for line in lines)
    assert "model called" in lines[0] and "execution_id=e-1" in lines[0] and "sk-canary" not in lines[0]
    assert "debug detail" in lines[2] and "debug-canary" in lines[2]


def test_a_procfile_worker_logs_json_lines_with_the_execution_id_and_no_input_text(
    settings, session_factory, clean_db, tmp_path: Path
):  # type: ignore[no-untyped-def]
    from app.bootstrap import build_service
    from workers.background import BackgroundTaskManager
    from workers.celery_app import celery_app

    queue = f"test-logging-{secrets.token_hex(4)}"
    log_path = tmp_path / "worker.log"
    worker = start_procfile_process(
        "worker",
        {
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "CELERY_QUEUES": queue,
            "WORKER_CONCURRENCY": "2",
            "MODEL_API_KEY": "sk-key-canary",
        },
        log_path,
    )
    svc = build_service(
        background_tasks=BackgroundTaskManager(celery_app), settings=settings, session_factory=session_factory
    )
    try:
        agent = svc.create_agent(AgentCreate(name="logged", system_prompt="system-canary"))
        execution, _ = svc.create_execution(
            ExecutionCreate(agent_id=agent.id, queue=queue, parameters={"input": "input-canary"})
        )
        wait_for(
            lambda: svc.get_execution(execution.id).state == "COMPLETED",
            timeout=30,
            what="the execution to complete on the Procfile worker",
        )
        execution_id = str(execution.id)

        def run_lines() -> list[dict[str, Any]]:
            return [r for r in json_lines(log_path) if r.get("execution_id") == execution_id]

        lines = wait_for(
            lambda: [r for r in run_lines() if r["event"] == "run finished"] and run_lines(),
            timeout=10,
            what="the worker's 'run finished' line",
        )
    finally:
        stop_process(worker)
        if svc.control_hub is not None:
            svc.control_hub.stop()
    finished = next(r for r in lines if r["event"] == "run finished")
    assert finished["attempt"] == 1 and finished["agent_id"] == str(agent.id)
    assert finished["level"] == "info" and finished["outcome"] == "COMPLETED"
    # Celery's own task line carries the execution too (bound before the task body runs).
    assert any("succeeded" in r["event"] and r.get("logger", "").startswith("celery") for r in lines)
    text = log_path.read_text()
    for canary in ("input-canary", "system-canary", "sk-key-canary"):
        assert canary not in text
    assert uuid.UUID(finished["execution_id"]) == execution.id
