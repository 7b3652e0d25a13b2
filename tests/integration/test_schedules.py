"""Delayed starts and cron schedules on the real database: the tick queues a delayed execution
when due and not before; a cancelled one never runs; each cron tick creates exactly one
execution, also when two tick passes run at once, and a DST change neither skips nor doubles
a tick (the clock is injected); the /v1/schedules resource is tenant-scoped and validated."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.errors import ScheduleNotFoundError
from app.schemas import ExecutionCreate, ExecutionFilters, Pagination, ScheduleCreate, ScheduleUpdate
from tests.conftest import wait_for
from tests.integration.conftest import wait_finished


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _history(api: Any, execution_id: str) -> list[dict[str, Any]]:
    return api.get(f"/v1/executions/{execution_id}/history").get_json()["items"]


def _runs(service: Any, schedule_id: uuid.UUID) -> list[Any]:
    rows, _ = service.list_executions(
        ExecutionFilters(metadata={"schedule_id": str(schedule_id)}), Pagination(page_size=200)
    )
    return sorted(rows, key=lambda r: r.metadata_["schedule_tick"])


# ------------------------------------------------------------------ delayed starts


def test_delay_seconds_waits_pending_and_runs_after_the_delay_not_before(api_app, api, api_agent):  # type: ignore[no-untyped-def]
    svc = api_app.extensions["agentexec.service"]
    resp = api.post(
        "/v1/executions",
        json={"agent_id": api_agent["id"], "parameters": {"input": "later"}, "delay_seconds": 2},
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    created = datetime.fromisoformat(body["created_at"])
    assert body["state"] == "PENDING" and body["queued_at"] is None
    scheduled = datetime.fromisoformat(body["scheduled_at"])
    assert scheduled >= created + timedelta(seconds=2)

    stop = threading.Event()

    def beat() -> None:  # the beat task's body, every 100 ms
        while not stop.is_set():
            svc.tick_schedules()
            stop.wait(0.1)

    ticker = threading.Thread(target=beat, daemon=True)
    ticker.start()
    try:
        done = wait_finished(api, body["id"], timeout=30)
    finally:
        stop.set()
        ticker.join(5)
    assert done["state"] == "COMPLETED"
    queued = [h for h in _history(api, body["id"]) if h["to_state"] == "QUEUED"]
    assert [h["reason"] for h in queued] == ["scheduled start"]
    assert datetime.fromisoformat(queued[0]["created_at"]) >= created + timedelta(seconds=2)
    assert datetime.fromisoformat(done["started_at"]) >= scheduled


def test_a_delayed_execution_cancelled_while_waiting_never_runs(service, agent, dispatcher):  # type: ignore[no-untyped-def]
    execution, _ = service.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, delay_seconds=1)
    )
    assert service.tick_schedules()["started"] == 0  # not due yet
    cancelled = service.cancel_execution(execution.id)
    assert cancelled.state == "CANCELLED"
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert service.tick_schedules(now=later)["started"] == 0
    row = service.get_execution(execution.id)
    assert row.state == "CANCELLED" and row.attempt == 0
    assert [h.to_state for h in service.get_state_history(execution.id)] == ["PENDING", "CANCELLED"]
    assert dispatcher.started == []


def test_start_at_queues_once_even_with_two_tick_passes_at_once(service, agent, dispatcher):  # type: ignore[no-untyped-def]
    start_at = datetime.now(UTC) + timedelta(minutes=5)
    ids = [
        service.create_execution(
            ExecutionCreate(agent_id=agent.id, parameters={"input": str(i)}, start_at=start_at)
        )[0].id
        for i in range(20)
    ]
    assert service.get_execution(ids[0]).scheduled_at == start_at
    due = start_at + timedelta(seconds=1)
    barrier = threading.Barrier(2)
    results: list[int] = []

    def tick() -> None:
        barrier.wait()
        results.append(service.tick_schedules(now=due)["started"])

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sum(results) == 20
    assert sorted(e[0] for e in dispatcher.started) == sorted(ids)  # one task per execution
    assert {service.get_execution(i).state for i in ids} == {"QUEUED"}


def test_bad_start_times_are_422_problems(api, api_agent):  # type: ignore[no-untyped-def]
    base = {"agent_id": api_agent["id"], "parameters": {"input": "x"}}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for extra, says in [
        ({"start_at": "2020-01-01T00:00:00Z"}, "in the future"),
        ({"start_at": "2030-01-01T00:00:00"}, "time zone"),
        ({"start_at": 1893456000}, "RFC 3339"),
        ({"start_at": (datetime.now(UTC) + timedelta(days=400)).isoformat()}, "a year"),
        ({"start_at": future, "delay_seconds": 5}, "at most one"),
        ({"delay_seconds": 5, "start": False}, "start: false"),
        ({"delay_seconds": 0}, "greater than 0"),
    ]:
        resp = api.post("/v1/executions", json=base | extra)
        assert resp.status_code == 422, (extra, resp.get_data(as_text=True))
        assert resp.mimetype == "application/problem+json"
        assert says in resp.get_data(as_text=True), (extra, resp.get_data(as_text=True))


# ------------------------------------------------------------------ cron schedules


def test_each_tick_creates_one_execution_also_with_two_tick_passes_at_once(service, agent):  # type: ignore[no-untyped-def]
    t0 = utc(2026, 5, 4, 9, 0, 30)
    schedule = service.scheduler.create(
        ScheduleCreate(agent_id=agent.id, cron="* * * * *", parameters={"input": "every minute"}),
        tenant="default",
        now=t0,
    )
    assert schedule.next_run_at == utc(2026, 5, 4, 9, 1)
    for minute in range(1, 4):
        now = t0 + timedelta(minutes=minute, seconds=5)
        barrier = threading.Barrier(2)

        def tick(now: datetime = now, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            service.tick_schedules(now=now)

        threads = [threading.Thread(target=tick) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        service.tick_schedules(now=now)  # a third pass in the same minute: nothing more
    runs = _runs(service, schedule.id)
    assert [r.metadata_["schedule_tick"] for r in runs] == [
        utc(2026, 5, 4, 9, m).isoformat() for m in (1, 2, 3)
    ]
    row = service.get_schedule(schedule.id)
    assert row.last_run_at == utc(2026, 5, 4, 9, 3) and row.next_run_at == utc(2026, 5, 4, 9, 4)
    assert row.last_execution_id == runs[-1].id and row.last_error is None
    assert {r.state for r in runs} == {"QUEUED"}


def test_ticks_missed_while_down_run_once_the_latest(service, agent):  # type: ignore[no-untyped-def]
    t0 = utc(2026, 5, 4, 9, 0, 30)
    schedule = service.scheduler.create(
        ScheduleCreate(agent_id=agent.id, cron="*/5 * * * *", parameters={"input": "x"}),
        tenant="default",
        now=t0,
    )
    assert service.tick_schedules(now=t0 + timedelta(hours=1))["fired"] == 1
    runs = _runs(service, schedule.id)
    assert [r.metadata_["schedule_tick"] for r in runs] == [utc(2026, 5, 4, 10, 0).isoformat()]
    assert service.get_schedule(schedule.id).next_run_at == utc(2026, 5, 4, 10, 5)


def _drive(service: Any, start: datetime, end: datetime, step: timedelta) -> None:
    now = start
    while now <= end:
        service.tick_schedules(now=now)
        now += step


def test_a_dst_change_neither_skips_nor_doubles_a_daily_tick(service, agent):  # type: ignore[no-untyped-def]
    spring = service.scheduler.create(
        ScheduleCreate(
            agent_id=agent.id, cron="30 2 * * *", timezone="Europe/Berlin", parameters={"input": "s"}
        ),
        tenant="default",
        now=utc(2026, 3, 27, 12),
    )
    _drive(service, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12), timedelta(minutes=20))
    assert [r.metadata_["schedule_tick"] for r in _runs(service, spring.id)] == [
        t.isoformat()
        for t in (
            utc(2026, 3, 28, 1, 30),
            utc(2026, 3, 29, 1, 0),
            utc(2026, 3, 30, 0, 30),
            utc(2026, 3, 31, 0, 30),
        )
    ]
    fall = service.scheduler.create(
        ScheduleCreate(
            agent_id=agent.id, cron="0 * * * *", timezone="Europe/Berlin", parameters={"input": "f"}
        ),
        tenant="default",
        now=utc(2026, 10, 24, 21, 30),
    )
    _drive(service, utc(2026, 10, 24, 21, 30), utc(2026, 10, 25, 3, 30), timedelta(minutes=10))
    # Berlin's 02:00-03:00 happens twice (00:00 and 01:00 UTC): both real hours run, once each.
    assert [r.metadata_["schedule_tick"] for r in _runs(service, fall.id)] == [
        utc(2026, 10, 24, 22).isoformat(),
        utc(2026, 10, 24, 23).isoformat(),
        *(utc(2026, 10, 25, h).isoformat() for h in range(4)),
    ]


def test_a_tick_of_a_busy_task_with_reject_creates_nothing_and_says_why(service, agent):  # type: ignore[no-untyped-def]
    task = uuid.uuid4()
    service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, task_id=task))
    t0 = utc(2026, 5, 4, 9, 0, 30)
    schedule = service.scheduler.create(
        ScheduleCreate(
            agent_id=agent.id, cron="* * * * *", parameters={"input": "y"}, task_id=task, on_conflict="reject"
        ),
        tenant="default",
        now=t0,
    )
    assert service.tick_schedules(now=t0 + timedelta(minutes=1))["skipped"] == 1
    row = service.get_schedule(schedule.id)
    assert "already has an active execution" in (row.last_error or "")
    assert row.next_run_at == utc(2026, 5, 4, 9, 2) and _runs(service, schedule.id) == []


def test_disabling_stops_ticks_and_enabling_starts_from_the_next_tick(service, agent):  # type: ignore[no-untyped-def]
    t0 = utc(2026, 5, 4, 9, 0, 30)
    schedule = service.scheduler.create(
        ScheduleCreate(agent_id=agent.id, cron="* * * * *", parameters={"input": "x"}),
        tenant="default",
        now=t0,
    )
    off = service.scheduler.update(schedule.id, ScheduleUpdate(enabled=False), tenant="default")
    assert off.next_run_at is None
    assert service.tick_schedules(now=t0 + timedelta(minutes=5))["fired"] == 0
    on = service.scheduler.update(
        schedule.id, ScheduleUpdate(enabled=True), tenant="default", now=t0 + timedelta(minutes=5)
    )
    assert on.next_run_at == utc(2026, 5, 4, 9, 6)


def test_a_schedule_of_another_tenant_is_not_found(service, agent):  # type: ignore[no-untyped-def]
    schedule = service.create_schedule(
        ScheduleCreate(agent_id=agent.id, cron="0 7 * * *", parameters={"input": "x"}), tenant="default"
    )
    for call in (
        lambda: service.get_schedule(schedule.id, tenant="other"),
        lambda: service.update_schedule(schedule.id, ScheduleUpdate(enabled=False), tenant="other"),
        lambda: service.delete_schedule(schedule.id, tenant="other"),
    ):
        try:
            call()
        except ScheduleNotFoundError:
            continue
        raise AssertionError("another tenant reached the schedule")
    assert service.get_schedule(schedule.id).enabled is True


# ------------------------------------------------------------------ the HTTP resource


def test_schedules_over_http_create_read_update_list_delete(api, api_agent, api_app):  # type: ignore[no-untyped-def]
    body = {
        "agent_id": api_agent["id"],
        "cron": "30 7 * * 1-5",
        "timezone": "Europe/Berlin",
        "parameters": {"type": "standard", "input": "morning report"},
    }
    resp = api.post("/v1/schedules", json=body)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    created = resp.get_json()
    assert resp.headers["Location"] == f"/v1/schedules/{created['id']}"
    assert created["enabled"] is True and created["next_run_at"] is not None
    assert created["last_run_at"] is None and created["last_execution_id"] is None
    assert api.get(f"/v1/schedules/{created['id']}").get_json() == created

    patched = api.patch(f"/v1/schedules/{created['id']}", json={"enabled": False}).get_json()
    assert patched["enabled"] is False and patched["next_run_at"] is None
    patched = api.patch(
        f"/v1/schedules/{created['id']}", json={"enabled": True, "cron": "0 6 * * *"}
    ).get_json()
    assert patched["cron"] == "0 6 * * *" and datetime.fromisoformat(patched["next_run_at"]).minute == 0

    listed = api.get("/v1/schedules?page_size=10").get_json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == created["id"]

    assert api.delete(f"/v1/schedules/{created['id']}").status_code == 204
    gone = api.get(f"/v1/schedules/{created['id']}")
    assert gone.status_code == 404 and gone.mimetype == "application/problem+json"

    svc = api_app.extensions["agentexec.service"]
    other_agent = svc.create_agent(
        __import__("app.schemas", fromlist=["AgentCreate"]).AgentCreate(name="theirs")
    )
    # An agent of another tenant is an unknown agent here; a schedule of another tenant is a 404.
    with svc.repository.unit_of_work() as work:
        work.session.execute(
            __import__("sqlalchemy").text("UPDATE agents SET tenant = 'other' WHERE id = :i"),
            {"i": other_agent.id},
        )
    resp = api.post("/v1/schedules", json=body | {"agent_id": str(other_agent.id)})
    assert resp.status_code == 422 and "not found" in resp.get_json()["detail"]
    theirs = svc.create_schedule(
        ScheduleCreate(agent_id=other_agent.id, cron="0 7 * * *", parameters={"input": "x"}), tenant="other"
    )
    assert api.get(f"/v1/schedules/{theirs.id}").status_code == 404
    assert api.delete(f"/v1/schedules/{theirs.id}").status_code == 404
    assert api.get("/v1/schedules").get_json()["total"] == 0


def test_bad_schedules_are_422_problems_naming_the_field(api, api_agent):  # type: ignore[no-untyped-def]
    base = {"agent_id": api_agent["id"], "cron": "0 7 * * *", "parameters": {"input": "x"}}
    for extra, field, says in [
        ({"cron": "0 7 * *"}, "cron", "5 fields"),
        ({"cron": "0 25 * * *"}, "cron", "Bad hour"),
        ({"timezone": "Europe/Atlantis"}, "timezone", "unknown time zone"),
        ({"on_conflict": "sometimes"}, "on_conflict", ""),
        ({"agent_id": str(uuid.uuid4())}, None, "not found"),
    ]:
        resp = api.post("/v1/schedules", json=base | extra)
        assert resp.status_code == 422, (extra, resp.get_data(as_text=True))
        problem = resp.get_json()
        assert resp.mimetype == "application/problem+json"
        if field is not None:
            assert any(e["loc"][-1] == field for e in problem["errors"]), problem
        assert says in resp.get_data(as_text=True)


def test_a_tenant_has_at_most_schedules_max_per_tenant(service, agent):  # type: ignore[no-untyped-def]
    service.scheduler.settings = service.settings.model_copy(update={"schedules_max_per_tenant": 2})
    make = ScheduleCreate(agent_id=agent.id, cron="0 7 * * *", parameters={"input": "x"})
    service.create_schedule(make)
    service.create_schedule(make)
    try:
        service.create_schedule(make)
    except Exception as exc:
        assert "SCHEDULES_MAX_PER_TENANT" in str(exc) and type(exc).__name__ == "ConflictError"
    else:
        raise AssertionError("a third schedule was accepted")


def test_the_real_worker_runs_what_a_schedule_tick_created(api_app, api, api_agent):  # type: ignore[no-untyped-def]
    svc = api_app.extensions["agentexec.service"]
    t0 = datetime.now(UTC)
    schedule = svc.scheduler.create(
        ScheduleCreate(agent_id=uuid.UUID(api_agent["id"]), cron="* * * * *", parameters={"input": "tick"}),
        tenant="default",
        now=t0 - timedelta(minutes=1),
    )
    assert svc.tick_schedules(now=t0)["fired"] == 1
    listed = wait_for(
        lambda: api.get(f"/v1/executions?metadata.schedule_id={schedule.id}").get_json()["items"],
        what="the tick's execution",
    )
    assert wait_finished(api, listed[0]["id"])["state"] == "COMPLETED"
    got = api.get(f"/v1/schedules/{schedule.id}").get_json()
    assert got["last_execution_id"] == listed[0]["id"]


def test_a_schedule_whose_parameters_became_invalid_says_so_and_others_still_run(service, agent):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    t0 = utc(2026, 5, 4, 9, 0, 30)
    make = ScheduleCreate(agent_id=agent.id, cron="* * * * *", parameters={"input": "x"})
    broken = service.scheduler.create(make, tenant="default", now=t0)
    fine = service.scheduler.create(make, tenant="default", now=t0)
    with service.repository.unit_of_work() as work:  # as if a later release refused what it holds
        work.session.execute(
            text('UPDATE schedules SET parameters = \'{"type": "pipeline"}\' WHERE id = :i'), {"i": broken.id}
        )
    counts = service.tick_schedules(now=t0 + timedelta(minutes=1))
    assert (counts["fired"], counts["skipped"]) == (1, 1)
    assert "not valid any more" in (service.get_schedule(broken.id).last_error or "")
    assert len(_runs(service, fine.id)) == 1 and _runs(service, broken.id) == []
