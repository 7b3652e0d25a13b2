"""Somebody watches the reaper: each pass is recorded, /metrics shows its age and what it recovered,
/readyz reports degraded while it does not run."""

from __future__ import annotations

import uuid

from app.schemas import AgentCreate, ExecutionCreate
from app.schemas import ExecutionState as S
from tests.conftest import wait_for


def _status() -> str:
    """What `agentexec status` prints (an operator command: it reads DATABASE_URL itself)."""
    from typer.testing import CliRunner

    from cli.main import app as cli_app

    result = CliRunner().invoke(cli_app, ["status"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


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


def test_the_schedule_tick_and_the_webhook_dispatcher_are_watched_too(api_app, api, session_factory):  # type: ignore[no-untyped-def]
    """Beat's other passes record each run: /metrics shows their age and count, /readyz says which
    one stopped, `agentexec status` prints when each last ran."""
    from sqlalchemy import text

    import workers.tasks as tasks
    import workers.webhooks as webhook_tasks

    text_before = api.get("/metrics").get_data(as_text=True)
    assert "agentexec_periodic_last_run_age_seconds{" not in text_before  # never ran: absent
    api_app.extensions["agentexec.service"].reap()
    tasks.tick_schedules.run()
    tasks.tick_schedules.run()
    webhook_tasks.dispatch.run()

    # The scrape-time figures are cached for 2 s: the read before the passes may still be served.
    def scraped() -> str | None:
        body = api.get("/metrics").get_data(as_text=True)
        return body if 'task="webhook_dispatch"' in body else None

    metrics = wait_for(scraped, timeout=10, what="the passes in /metrics")
    for task, runs in (("schedule_tick", 2), ("webhook_dispatch", 1)):
        assert 0 <= _metric(metrics, f'agentexec_periodic_last_run_age_seconds{{task="{task}"}}') < 5  # type: ignore[operator]
        assert _metric(metrics, f'agentexec_periodic_runs_total{{task="{task}"}}') == runs
    assert api.get("/readyz").get_json()["status"] == "ready"
    printed = _status()
    assert "schedule tick: last ran" in printed and "webhook dispatch: last ran" in printed

    with session_factory() as s:  # as if the tick had stopped two minutes ago
        s.execute(
            text(
                "UPDATE periodic_status SET last_run_at = now() - interval '120 seconds' "
                "WHERE task = 'schedule_tick'"
            )
        )
        s.commit()
    body = api.get("/readyz").get_json()
    assert body["status"] == "degraded" and len(body["reasons"]) == 1, body
    assert body["reasons"][0].startswith("the schedule tick") and "120 s ago" in body["reasons"][0]
