"""The hot path's shortcuts on real PostgreSQL: one-statement writes, cached statement shapes,
time-boxed list totals and pinging only idle pooled connections."""

from __future__ import annotations

import contextlib
import itertools
import threading
import uuid

import psycopg
import pytest
from sqlalchemy import func, select, text

from app.models import Execution, ExecutionEvent, ExecutionStateHistory
from app.schemas import ExecutionCreate, ExecutionProgressUpdate
from app.schemas import ExecutionState as S


class _Statements:
    """Counts the SQL statements sent through the driver (psycopg) while the block runs: those of
    SQLAlchemy and those the transition writer sends to the driver itself. Only this thread's."""

    def __init__(self, engine):  # type: ignore[no-untyped-def]
        self.engine = engine
        self.sql: list[str] = []
        self._thread = threading.get_ident()

    def __enter__(self) -> _Statements:
        original = self._original = psycopg.Cursor.execute
        seen = self

        def execute(cursor, query, *args, **kwargs):  # type: ignore[no-untyped-def]
            if threading.get_ident() == seen._thread:
                seen.sql.append(str(query))
            return original(cursor, query, *args, **kwargs)

        psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        psycopg.Cursor.execute = self._original  # type: ignore[method-assign]


def _engine(service):  # type: ignore[no-untyped-def]
    return service.repository.session_factory.kw["bind"]


def test_a_transition_and_a_progress_report_are_each_one_statement(service, agent):  # type: ignore[no-untyped-def]
    ex, _ = service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
    with _Statements(_engine(service)) as seen:
        running = service.state_manager.change_state(
            ex.id, S.RUNNING, "claim", expected_state=S.QUEUED, expected_attempt=1
        )
    assert len(seen.sql) == 1 and running.state == "RUNNING" and running.started_at is not None
    with _Statements(_engine(service)) as seen:
        row = service.progress_tracker.update_progress(ex.id, ExecutionProgressUpdate(percentage=40))
    assert len(seen.sql) == 1 and row.progress_percentage == 40
    done = service.state_manager.change_state(
        ex.id, S.COMPLETED, "done", values={"result": {"output": "o"}}, progress_event=True
    )
    events = service.get_events(ex.id)
    assert [e.type for e in events][-3:] == [
        "agent.execution.progress",
        "agent.execution.state_changed",
        "agent.execution.completed",
    ]
    assert events[-1].payload["result"] == {"output": "o"} and events[-1].payload["state"] == "COMPLETED"
    assert events[-1].payload["agent_id"] == str(agent.id) and done.completed_at is not None
    assert [(h.from_state, h.to_state) for h in service.get_state_history(ex.id, 10)] == [
        (None, "PENDING"),
        ("PENDING", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "COMPLETED"),
    ]
    assert events[-2].payload["previous_state"] == "RUNNING"  # read by the statement itself


ROUNDS, THREADS = 60, 6


def test_racing_transitions_without_an_expected_state_leave_a_consistent_chain(  # type: ignore[no-untyped-def]
    service, agent, session_factory
):
    import threading

    targets = [S.PAUSING, S.CANCELLING, S.COMPLETED, S.FAILED, S.PAUSED, S.CANCELLED]
    ids = []
    for _ in range(ROUNDS):
        ex, _ = service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
        service.state_manager.change_state(ex.id, S.RUNNING, expected_state=S.QUEUED)
        ids.append(ex.id)
    barrier = threading.Barrier(THREADS)

    def contender(k: int) -> None:
        from app.errors import InvalidExecutionStateError

        for r, eid in enumerate(ids):
            barrier.wait()
            with contextlib.suppress(InvalidExecutionStateError):
                service.state_manager.change_state(eid, targets[(k + r) % THREADS], f"race {r}")

    threads = [threading.Thread(target=contender, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for eid in ids:
        chain = [(h.from_state, h.to_state) for h in service.get_state_history(eid, 50)]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chain)), chain
        changed = [
            (e.payload["previous_state"], e.payload["new_state"])
            for e in service.get_events(eid)
            if e.type == "agent.execution.state_changed"
        ]
        assert changed == chain
        with session_factory() as s:
            assert s.scalar(select(Execution.state).where(Execution.id == eid)) == chain[-1][1]


def test_a_transition_refused_by_its_guard_writes_no_history_and_no_event(service, agent, session_factory):  # type: ignore[no-untyped-def]
    from app.errors import InvalidExecutionStateError

    ex, _ = service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
    with pytest.raises(InvalidExecutionStateError):
        service.state_manager.change_state(
            ex.id, S.RUNNING, "stale", expected_state=S.QUEUED, expected_attempt=7
        )
    with session_factory() as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(ExecutionStateHistory)
                .where(ExecutionStateHistory.execution_id == ex.id)
            )
            == 2
        )
        assert (
            s.scalar(
                select(func.count()).select_from(ExecutionEvent).where(ExecutionEvent.execution_id == ex.id)
            )
            == 2
        )
        assert s.scalar(select(Execution.state).where(Execution.id == ex.id)) == "QUEUED"


def test_each_retry_delay_is_applied_although_the_statement_shape_is_reused(service, agent, session_factory):  # type: ignore[no-untyped-def]
    delays = {}
    for delay in (5.0, 120.0):
        ex, _ = service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
        service.state_manager.change_state(ex.id, S.RUNNING, expected_state=S.QUEUED)
        service.state_manager.change_state(ex.id, S.QUEUED, "retry", expected_state=S.RUNNING, delay=delay)
        with session_factory() as s:
            delays[delay] = s.scalar(
                select(func.extract("epoch", Execution.queued_at - func.now())).where(Execution.id == ex.id)
            )
    assert 3 < delays[5.0] <= 5.5
    assert 115 < delays[120.0] <= 120.5


def test_the_list_total_is_exact_when_few_match_and_a_flagged_estimate_beyond_the_cap(service, agent):  # type: ignore[no-untyped-def]
    for _ in range(30):
        service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False))
    rows, total, exact = service.repository.list_executions_page(
        {}, {"page": 1, "page_size": 5}, exact_up_to=100
    )
    assert (len(rows), total, exact) == (5, 30, True)
    rows, total, exact = service.repository.list_executions_page(
        {}, {"page": 1, "page_size": 5}, exact_up_to=10
    )
    assert len(rows) == 5 and exact is False and total >= 11
    rows, total, exact = service.repository.list_executions_page(
        {"state": ["RUNNING"]}, {"page": 1, "page_size": 5}, exact_up_to=10
    )
    assert (rows, total, exact) == ([], 0, True)


def test_a_pooled_connection_killed_while_idle_is_replaced_before_use(settings, monkeypatch):  # type: ignore[no-untyped-def]
    from app import db

    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)
    url = (
        settings.database_url
        + ("&" if "?" in settings.database_url else "?")
        + f"application_name=pingtest-{uuid.uuid4().hex[:8]}"
    )
    engine = db.get_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with db.get_engine(settings.database_url).connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        with engine.connect() as conn:  # the dead connection is pinged, dropped and replaced
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    finally:
        engine.dispose()


def test_creating_and_queueing_an_execution_is_one_statement_with_both_history_rows_and_events(  # type: ignore[no-untyped-def]
    service, agent, dispatcher
):
    with _Statements(_engine(service)) as seen:
        ex, created = service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
    assert len(seen.sql) == 1 and created
    assert (ex.state, ex.attempt, ex.celery_task_id) == ("QUEUED", 1, f"{ex.id}-1")
    assert ex.queued_at is not None and ex.progress_message == "Queued"
    assert dispatcher.started[-1][:2] == (ex.id, 1)
    events = service.get_events(ex.id)
    assert [(e.payload["previous_state"], e.payload["new_state"], e.payload["reason"]) for e in events] == [
        (None, "PENDING", "created"),
        ("PENDING", "QUEUED", "submitted"),
    ]
    assert [(h.from_state, h.to_state) for h in service.get_state_history(ex.id, 10)] == [
        (None, "PENDING"),
        ("PENDING", "QUEUED"),
    ]
    pending, _ = service.create_execution(
        ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False)
    )
    assert (pending.state, pending.attempt) == ("PENDING", 0)
    assert [e.payload["new_state"] for e in service.get_events(pending.id)] == ["PENDING"]


def test_an_execution_for_an_unknown_agent_or_another_tenants_agent_writes_nothing(
    service,
    agent,  # type: ignore[no-untyped-def]
    session_factory,
):
    from app.errors import AgentNotFoundError

    for agent_id, tenant in ((uuid.uuid4(), "default"), (agent.id, "someone-else")):
        with pytest.raises(AgentNotFoundError):
            service.create_execution(
                ExecutionCreate(agent_id=agent_id, parameters={"input": "x"}), tenant=tenant
            )
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Execution)) == 0
        assert s.scalar(select(func.count()).select_from(ExecutionEvent)) == 0


def test_the_event_bus_publishes_while_more_than_a_hundred_threads_hold_redis_connections(settings):  # type: ignore[no-untyped-def]
    from app.events import EventBus

    bus = EventBus(settings.redis_url)
    pool = bus.client.connection_pool
    held = [pool.get_connection() for _ in range(120)]  # as 120 worker threads publishing at once would
    try:
        assert bus.publish_many([("agentexec.test.fast-paths", {"execution_id": str(uuid.uuid4()), "id": 1})])
    finally:
        for conn in held:
            pool.release(conn)
        pool.disconnect()


def test_the_api_flags_an_estimated_total_and_counts_exactly_when_small(service, agent, session_factory):  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from app.schemas import ExecutionFilters, Pagination

    with session_factory() as s:
        s.execute(
            text(
                "INSERT INTO executions (id, agent_id, parameters, state) SELECT gen_random_uuid(), "
                ":a, '{}'::jsonb, 'COMPLETED' FROM generate_series(1, 12000)"
            ),
            {"a": agent.id},
        )
        s.execute(text("ANALYZE executions"))
        s.commit()
    rows, total, exact = service.list_executions_page(
        ExecutionFilters(state=["COMPLETED"]), Pagination(page_size=5), tenant="default"
    )
    assert len(rows) == 5 and not exact and total > 10_000
    rows, total, exact = service.list_executions_page(
        ExecutionFilters(state=["RUNNING"]), Pagination(), tenant="default"
    )
    assert rows == [] and total == 0 and exact
