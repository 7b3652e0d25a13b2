"""ExecutionRepository on real PostgreSQL: every method, filters, pagination, failures."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from app.db import make_session_factory
from app.errors import ConflictError, DatabaseError, DatabaseUnavailableError
from app.execution.repository import ExecutionRepository
from app.models import Agent, Execution, ExecutionStateHistory
from app.schemas import ExecutionFilters, ExecutionState, Pagination

STATES = ["PENDING", "QUEUED", "RUNNING", "COMPLETED", "FAILED"]


@pytest.fixture
def repo(session_factory, clean_db) -> ExecutionRepository:  # type: ignore[no-untyped-def]
    return ExecutionRepository(session_factory)


def _agent(repo: ExecutionRepository, name: str = "a") -> Agent:
    return repo.create_agent(Agent(name=name, model="m", system_prompt="", parameters={}))


def _execution(agent: Agent, **kw) -> Execution:  # type: ignore[no-untyped-def]
    return Execution(
        **(
            {
                "agent_id": agent.id,
                "parameters": {"type": "standard", "input": "x"},
                "state": "PENDING",
                "context": {},
            }
            | kw
        )
    )


def test_create_and_get_by_id_round_trip(repo):  # type: ignore[no-untyped-def]
    agent = _agent(repo)
    created = repo.create(_execution(agent, task_id=uuid.uuid4(), metadata_={"k": 1}))
    got = repo.get_by_id(created.id)
    assert got is not None and got.id == created.id
    assert got.metadata_ == {"k": 1}
    assert got.state == "PENDING" and got.attempt == 0


def test_get_by_id_of_an_unknown_execution_is_none(repo):  # type: ignore[no-untyped-def]
    assert repo.get_by_id(uuid.uuid4()) is None


def test_get_by_id_is_scoped_to_the_tenant(repo):  # type: ignore[no-untyped-def]
    created = repo.create(_execution(_agent(repo)))
    assert repo.get_by_id(created.id, tenant="other") is None
    assert repo.get_by_id(created.id, tenant="default") is not None


def test_update_state_is_guarded_by_the_expected_state_and_attempt(repo):  # type: ignore[no-untyped-def]
    ex = repo.create(_execution(_agent(repo)))
    assert repo.update_state(ex.id, ExecutionState.QUEUED, expected_state=ExecutionState.RUNNING) is None
    assert repo.update_state(ex.id, ExecutionState.QUEUED, expected_attempt=5) is None
    now = datetime.now(UTC)
    done = repo.update_state(
        ex.id,
        ExecutionState.QUEUED,
        {"queued_at": now},
        expected_state=ExecutionState.PENDING,
        expected_attempt=0,
    )
    assert done is not None and done.state == "QUEUED" and done.queued_at == now
    assert repo.update_state(uuid.uuid4(), ExecutionState.QUEUED) is None


def test_update_progress_merges_context_and_only_while_running(repo):  # type: ignore[no-untyped-def]
    ex = repo.create(_execution(_agent(repo), context={"keep": 1}))
    assert repo.update_progress(ex.id, 10, "not running") is None
    repo.update_state(ex.id, ExecutionState.RUNNING)
    row = repo.update_progress(ex.id, 10, "step", {"steps": {"a": {"output": "A"}}})
    assert row is not None and row.progress_percentage == 10 and row.progress_message == "step"
    assert row.context == {"keep": 1, "steps": {"a": {"output": "A"}}}
    assert repo.update_progress(ex.id, 5, "lower") is None
    assert repo.update_progress(uuid.uuid4(), 50, "missing") is None


def test_update_result_stores_result_and_error(repo):  # type: ignore[no-untyped-def]
    ex = repo.create(_execution(_agent(repo)))
    row = repo.update_result(ex.id, {"output": "o"}, "warn")
    assert row is not None and row.result == {"output": "o"} and row.error_message == "warn"
    assert repo.update_result(uuid.uuid4(), {}) is None


def test_state_history_is_the_last_n_oldest_first(repo):  # type: ignore[no-untyped-def]
    ex = repo.create(_execution(_agent(repo)))
    chain = ["PENDING", "QUEUED", "RUNNING", "FAILED", "QUEUED", "RUNNING", "COMPLETED"]
    for before, after in itertools.pairwise([None, *chain]):
        repo.create_state_history(
            ExecutionStateHistory(execution_id=ex.id, from_state=before, to_state=after, reason="r")
        )
    assert [h.to_state for h in repo.get_state_history(ex.id, limit=3)] == ["QUEUED", "RUNNING", "COMPLETED"]
    assert [h.to_state for h in repo.get_state_history(ex.id, limit=100)] == chain
    assert repo.get_state_history(uuid.uuid4()) == []


def test_delete_execution_reports_whether_it_deleted(repo):  # type: ignore[no-untyped-def]
    ex = repo.create(_execution(_agent(repo)))
    assert repo.delete_execution(ex.id, only_states=frozenset({ExecutionState.COMPLETED})) is False
    assert repo.delete_execution(ex.id) is True
    assert repo.delete_execution(ex.id) is False
    assert repo.get_by_id(ex.id) is None


def test_agents_create_get_list_update_delete(repo):  # type: ignore[no-untyped-def]
    a = _agent(repo, "alpha")
    b = _agent(repo, "beta")
    assert repo.get_agent(a.id).name == "alpha"
    assert repo.get_agent(b.id, tenant="default").id == b.id
    assert repo.get_agent(b.id, tenant="other") is None
    assert repo.get_agent(uuid.uuid4()) is None
    items, total = repo.list_agents(Pagination(page=1, page_size=1))
    assert total == 2 and [i.name for i in items] == ["alpha"]
    assert repo.update_agent(a.id, {"model": "m2"}).model == "m2"
    assert repo.update_agent(uuid.uuid4(), {"model": "m2"}) is None
    with pytest.raises(ConflictError):
        repo.update_agent(a.id, {"name": "beta"})
    with pytest.raises(ConflictError):
        _agent(repo, "alpha")
    assert repo.delete_agent(b.id) is True
    assert repo.delete_agent(b.id) is False


@pytest.fixture
def many(repo, session_factory):  # type: ignore[no-untyped-def]
    """1,200 executions over 3 agents, 5 states, 4 task ids and 1,200 distinct minutes."""
    agents = [_agent(repo, f"agent-{i}") for i in range(3)]
    tasks = [uuid.uuid4() for _ in range(4)]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(1200):
        rows.append(
            dict(
                id=uuid.uuid4(),
                agent_id=agents[i % 3].id,
                task_id=tasks[i % 4],
                state=STATES[i % 5],
                parameters={"type": "standard"},
                context={},
                created_at=base + timedelta(minutes=i),
            )
        )
    with session_factory() as s:
        s.execute(Execution.__table__.insert(), [r | {"metadata": {}} for r in rows])
        s.commit()
    return agents, tasks, base, rows


def _expected(rows, f: ExecutionFilters):  # type: ignore[no-untyped-def]
    out = rows
    if f.state:
        out = [r for r in out if r["state"] in {s.value for s in f.state}]
    if f.agent_id:
        out = [r for r in out if r["agent_id"] == f.agent_id]
    if f.task_id:
        out = [r for r in out if r["task_id"] == f.task_id]
    if f.created_after:
        out = [r for r in out if r["created_at"] > f.created_after]
    if f.created_before:
        out = [r for r in out if r["created_at"] < f.created_before]
    return sorted(out, key=lambda r: r["created_at"], reverse=True)


def test_filters_in_every_combination_match_a_python_reference(repo, many):  # type: ignore[no-untyped-def]
    agents, tasks, base, rows = many
    options = {
        "state": [None, ["RUNNING"], ["COMPLETED", "FAILED"]],
        "agent_id": [None, agents[1].id],
        "task_id": [None, tasks[2]],
        "created_after": [None, base + timedelta(minutes=300)],
        "created_before": [None, base + timedelta(minutes=900)],
    }
    keys = list(options)
    for combo in itertools.product(*(options[k] for k in keys)):
        f = ExecutionFilters(**dict(zip(keys, combo, strict=True)))
        expected = _expected(rows, f)
        items, total = repo.list_executions(f, Pagination(page=1, page_size=200))
        assert total == len(expected), f
        assert [i.id for i in items] == [r["id"] for r in expected[:200]], f


def test_pagination_walks_every_row_once_newest_first(repo, many):  # type: ignore[no-untyped-def]
    _, _, _, rows = many
    seen = []
    for page in range(1, 8):
        items, total = repo.list_executions({}, {"page": page, "page_size": 200})
        assert total == 1200
        seen.extend(i.id for i in items)
    assert seen == [r["id"] for r in sorted(rows, key=lambda r: r["created_at"], reverse=True)]
    items, total = repo.list_executions({}, {"page": 99, "page_size": 200})
    assert items == [] and total == 1200


def test_an_unreachable_database_raises_database_unavailable():
    from sqlalchemy import create_engine

    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2}
    )
    repo = ExecutionRepository(make_session_factory(engine))
    with pytest.raises(DatabaseUnavailableError):
        repo.get_by_id(uuid.uuid4())
    with pytest.raises(DatabaseError):
        repo.list_executions({}, {})
    engine.dispose()


def test_a_constraint_violation_raises_database_error_and_leaves_nothing(repo, session_factory):  # type: ignore[no-untyped-def]
    bad = Execution(agent_id=uuid.uuid4(), parameters={}, state="PENDING", context={})
    with pytest.raises(DatabaseError) as info:
        repo.create(bad)
    assert not isinstance(info.value, DatabaseUnavailableError)
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Execution)) == 0


def test_a_failure_inside_a_shared_transaction_rolls_back_every_write(repo, session_factory):  # type: ignore[no-untyped-def]
    agent = _agent(repo)
    with pytest.raises(DatabaseError), repo.unit_of_work() as uow:
        repo.create(_execution(agent), uow=uow)
        repo.create(Execution(agent_id=uuid.uuid4(), parameters={}, state="PENDING", context={}), uow=uow)
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Execution)) == 0
        assert s.execute(text("SELECT 1")).scalar() == 1


def test_a_write_on_a_connection_the_server_dropped_is_database_unavailable_and_the_next_works(
    service, agent
):  # type: ignore[no-untyped-def]
    """The transition writer talks to psycopg directly, so a server that dropped the pooled
    connection (a restart, pg_terminate_backend) reaches the unit of work as psycopg's error,
    not SQLAlchemy's. It must still be DatabaseUnavailableError (the runner retries that; it
    failed the PostgreSQL-restart e2e runs as 'internal error') and the dead connection must
    leave the pool, so the next write works."""
    import psycopg

    from app.schemas import ExecutionCreate
    from tests.conftest import PG_ADMIN_URL, TEST_DB

    execution, _ = service.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
    repo = service.repository
    engine = repo.session_factory.kw["bind"]
    held = [engine.connect() for _ in range(4)]  # several pooled connections, all to be dropped
    for connection in held:
        connection.close()
    assert repo.update_result(execution.id, {"output": "warm"}) is not None
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (TEST_DB,),
        )
    with pytest.raises(DatabaseUnavailableError):
        repo.update_result(execution.id, {"output": "lost"})
    for i in range(6):  # the pool pings the other dropped ones and replaces them: no more failures
        after = repo.update_result(execution.id, {"output": f"after {i}"})
        assert after is not None and after.result == {"output": f"after {i}"}
