"""Queues: the API accepts only the queues workers read; the reaper never piles up messages."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from app.models import Execution
from app.schemas import AgentCreate, ExecutionCreate
from tests.conftest import wait_for


def test_an_unknown_queue_is_refused_with_422_and_nothing_is_created(api, api_agent, session_factory):  # type: ignore[no-untyped-def]
    resp = api.post(
        "/v1/executions",
        json={"agent_id": api_agent["id"], "parameters": {"input": "x"}, "queue": "nosuchqueue"},
    )
    assert resp.status_code == 422 and resp.content_type == "application/problem+json"
    body = resp.get_json()
    assert body["errors"][0]["loc"] == ["body", "queue"] and "nosuchqueue" in body["detail"]
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Execution)) == 0


def test_the_default_queue_and_the_listed_ones_are_accepted(api, api_agent, settings):  # type: ignore[no-untyped-def]
    resp = api.post(
        "/v1/executions",
        json={"agent_id": api_agent["id"], "parameters": {"input": "x"}, "queue": settings.default_queue},
    )
    assert resp.status_code == 201


@pytest.fixture
def unread(settings, session_factory, clean_db, celery_app):  # type: ignore[no-untyped-def]
    """A service whose reaper redelivers after 0.1 s, and a queue no worker reads."""
    from app.bootstrap import build_service
    from app.config import Settings
    from workers.background import BackgroundTaskManager

    fast = Settings(redeliver_after=0.1)
    svc = build_service(
        background_tasks=lambda hub: BackgroundTaskManager(celery_app, hub),
        settings=fast,
        session_factory=session_factory,
    )
    queue = f"unread-{uuid.uuid4().hex[:8]}"
    manager = svc.background_tasks
    yield svc, queue, manager
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
    svc.control_hub.stop()


def test_the_reaper_does_not_send_another_message_while_the_first_waits_in_the_broker(unread):  # type: ignore[no-untyped-def]
    svc, queue, manager = unread
    agent = svc.create_agent(AgentCreate(name="q"))
    execution, _ = svc.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, queue=queue)
    )
    assert manager.queue_depth(queue) == 1
    for _ in range(3):  # each pass finds it unclaimed past redeliver_after
        wait_for(lambda: svc.reap()["still_in_broker"] == 1, what="a pass that finds it unclaimed")
    assert manager.queue_depth(queue) == 1
    assert svc.get_execution(execution.id).state == "QUEUED"


def test_the_reaper_resends_a_message_that_was_lost_from_the_broker(unread, celery_app):  # type: ignore[no-untyped-def]
    svc, queue, manager = unread
    agent = svc.create_agent(AgentCreate(name="q"))
    svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, queue=queue))
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)  # as a flushed Redis would
    assert manager.queue_depth(queue) == 0
    wait_for(lambda: svc.reap()["redelivered"] == 1, what="the redelivery")
    assert manager.queue_depth(queue) == 1
