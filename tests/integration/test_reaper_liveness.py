"""Somebody watches the reaper: each pass is recorded, /metrics shows its age and what it recovered,
/readyz reports degraded while it does not run."""

from __future__ import annotations

import uuid

from app.schemas import AgentCreate, ExecutionCreate
from app.schemas import ExecutionState as S


def _metric(text: str, name: str) -> float | None:
    line = next((x for x in text.splitlines() if x.startswith(name)), None)
    return None if line is None else float(line.split()[-1])


def test_readyz_is_degraded_until_the_reaper_runs_and_metrics_show_its_last_pass(api_app, api):  # type: ignore[no-untyped-def]
    svc = api_app.extensions["agentexec.service"]
    before = api.get("/readyz")
    assert before.status_code == 200  # still serving: the API itself is fine
    assert before.get_json()["status"] == "degraded" and "never run" in before.get_json()["reasons"][0]

    svc.reap()
    after = api.get("/readyz").get_json()
    assert after["status"] == "ready" and after["reasons"] is None
    text = api.get("/metrics").get_data(as_text=True)
    assert 0 <= _metric(text, "agentexec_reaper_last_pass_age_seconds") < 5  # type: ignore[operator]
    assert _metric(text, "agentexec_reaper_passes_total") == 1


def test_readyz_says_how_long_ago_the_reaper_last_ran_when_it_stopped(api_app, api, session_factory):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    api_app.extensions["agentexec.service"].reap()
    with session_factory() as s:  # as if beat had stopped two minutes ago
        s.execute(text("UPDATE reaper_status SET last_pass_at = now() - interval '120 seconds'"))
        s.commit()
    body = api.get("/readyz").get_json()
    assert body["status"] == "degraded" and "120 s ago" in body["reasons"][0]


def test_executions_recovered_by_the_reaper_are_counted_by_cause(api_app, api, session_factory):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    svc = api_app.extensions["agentexec.service"]
    agent = svc.create_agent(AgentCreate(name="lost"))
    unread = f"nobody-{uuid.uuid4().hex[:6]}"  # no worker takes it up again once requeued
    execution, _ = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, queue=unread)
    )
    with session_factory() as s:  # a RUNNING execution whose worker died an hour ago
        s.execute(
            text(
                "UPDATE executions SET state = 'RUNNING', heartbeat_at = now() - interval '1 hour' "
                "WHERE id = :i"
            ),
            {"i": execution.id},
        )
        s.commit()
    counts = svc.reap()
    assert counts["requeued"] == 1
    assert svc.get_execution(execution.id).state == S.QUEUED.value
    text_ = api.get("/metrics").get_data(as_text=True)
    assert _metric(text_, 'agentexec_reaper_recovered_total{cause="worker_lost"}') == 1
    with session_factory() as s:  # lost again, with no retry left: FAILED worker_lost
        s.execute(
            text(
                "UPDATE executions SET state = 'RUNNING', heartbeat_at = now() - interval '1 hour',"
                " max_retries = 0 WHERE id = :i"
            ),
            {"i": execution.id},
        )
        s.commit()
    assert svc.reap()["failed"] == 1
    lost = svc.get_execution(execution.id)
    assert (lost.state, lost.error_code) == ("FAILED", "worker_lost")
