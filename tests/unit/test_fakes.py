"""The in-memory repository keeps the SQL's promises: guards, named expressions, logged rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import TextClause

from app import events
from app.execution.event_emitter import ExecutionEventEmitter
from app.execution.writer import Expr, Shape, build_sql
from app.models import Execution
from app.schemas import ExecutionState as S
from tests.unit.fakes import EXPRESSIONS, SERVER_DEFAULTS, FakeRepository

EMIT = ExecutionEventEmitter(None)  # type: ignore[arg-type]
NAMED = [v for v in vars(Expr).values() if isinstance(v, Expr)]


def _repo_with_execution(**values: Any) -> tuple[FakeRepository, uuid.UUID]:
    repo = FakeRepository()
    agent = repo.add_agent(model="m", system_prompt="be brief", parameters={"provider": "simulated"})
    ex_id = uuid.uuid4()
    row = {"id": ex_id, "agent_id": agent.id, "parameters": {}, "state": "RUNNING", "attempt": 1} | values
    assert repo.create_execution(row, history=[], events=[], agent_tenant=None).execution is not None
    return repo, ex_id


def _to(repo: FakeRepository, ex_id: uuid.UUID, target: S, **kw: Any):  # type: ignore[no-untyped-def]
    return repo.transition(ex_id, target, **({"expected_state": None, "events": []} | kw))


def test_the_fake_has_a_python_form_of_every_named_sql_expression():
    assert len(NAMED) == len(Expr.__annotations__)
    assert set(EXPRESSIONS) == set(NAMED)


def test_an_expression_the_fake_does_not_know_is_refused():
    repo, ex_id = _repo_with_execution()
    unknown = Expr("clock_timestamp()")
    with pytest.raises(NotImplementedError):
        _to(repo, ex_id, S.COMPLETED, expected_state=S.RUNNING, values={"completed_at": unknown})


def _raises_value_error(call: Callable[..., Any], *args: Any) -> bool:
    try:
        call(*args)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("expr", NAMED, ids=str)
def test_a_fake_expression_reads_the_earlier_row_exactly_when_the_sql_refuses_it_in_an_insert(expr):
    shape = Shape(kind="insert", guards=(), values=(("queued_at", str(expr)),), events=(), history=0)
    params = {"delay_seconds": 1.0, "context_update": {}}
    fake_refuses = _raises_value_error(EXPRESSIONS[expr], None, datetime.now(UTC), params)
    assert fake_refuses is _raises_value_error(build_sql, shape)


def test_an_insert_that_reads_the_row_it_inserts_is_refused_by_the_fake_too():
    repo = FakeRepository()
    values = {"id": uuid.uuid4(), "agent_id": repo.add_agent().id, "parameters": {}, "state": "PENDING"}
    with pytest.raises(ValueError, match="no earlier values"):
        repo.create_execution(
            values | {"attempt": Expr.NEXT_ATTEMPT}, history=[], events=[], agent_tenant=None
        )
    assert repo.rows == {}


def test_a_transition_whose_state_attempt_or_tenant_guard_fails_writes_nothing():
    repo, ex_id = _repo_with_execution()
    before = repo.get_by_id(ex_id)
    refused = [
        _to(repo, ex_id, S.COMPLETED, expected_state=S.QUEUED, events=[EMIT.completed()]),
        _to(repo, ex_id, S.COMPLETED, expected_state=S.RUNNING, expected_attempt=2),
        _to(repo, ex_id, S.COMPLETED, expected_state=S.RUNNING, tenant="other"),
        _to(repo, ex_id, S.CANCELLED, sources=frozenset({S.CANCELLING}), reason="x"),
        _to(repo, uuid.uuid4(), S.COMPLETED, expected_state=S.RUNNING),
    ]
    assert all(w.execution is None and w.events == [] for w in refused)
    assert repo.history == [] and repo.events == []
    assert repo.get_by_id(ex_id).updated_at == before.updated_at  # type: ignore[union-attr]


def test_a_transition_from_sources_logs_the_state_it_replaced():
    repo, ex_id = _repo_with_execution()
    written = _to(
        repo,
        ex_id,
        S.CANCELLING,
        sources=frozenset({S.RUNNING, S.PAUSING}),
        reason="cancel",
        events=[EMIT.state_changed(None, "cancel", previous_from_row=True)],
    )
    assert written.previous_state == "RUNNING"
    assert repo.history_of(ex_id) == [("RUNNING", "CANCELLING", "cancel")]
    assert written.events[0].payload["previous_state"] == "RUNNING"
    assert written.events[0].payload["new_state"] == "CANCELLING"


def test_only_a_write_from_sources_can_read_the_previous_state_from_the_row():
    repo, ex_id = _repo_with_execution()
    with pytest.raises(ValueError):
        _to(
            repo,
            ex_id,
            S.CANCELLING,
            expected_state=S.RUNNING,
            events=[EMIT.state_changed(None, "x", previous_from_row=True)],
        )


def test_progress_is_written_only_while_running_and_never_lower():
    repo, ex_id = _repo_with_execution()

    def report(pct: float, attempt: int = 1) -> bool:
        return (
            repo.record_progress(ex_id, pct, f"{pct}", events=[], expected_attempt=attempt).execution
            is not None
        )

    assert report(40) and report(40) and not report(39.99) and not report(90, attempt=2)
    _to(repo, ex_id, S.PAUSING, expected_state=S.RUNNING)
    assert not report(90)
    assert repo.get_by_id(ex_id).progress_percentage == 40.0  # type: ignore[union-attr]


def test_a_checkpoint_merges_the_top_level_keys_of_context_while_the_attempt_holds_the_execution():
    repo, ex_id = _repo_with_execution(context={"keep": 1, "steps": {"a": {}}})
    assert repo.save_checkpoint(ex_id, 1, {"steps": {"b": {}}})
    assert repo.get_by_id(ex_id).context == {"keep": 1, "steps": {"b": {}}}  # type: ignore[union-attr]
    assert not repo.save_checkpoint(ex_id, 2, {"steps": {}})
    _to(repo, ex_id, S.COMPLETED, expected_state=S.RUNNING)
    assert not repo.save_checkpoint(ex_id, 1, {"steps": {}})


def test_entering_queued_again_reads_the_attempt_before_the_write():
    repo, ex_id = _repo_with_execution(attempt=3)
    written = _to(
        repo,
        ex_id,
        S.QUEUED,
        expected_state=S.RUNNING,
        params={"delay_seconds": 2.0},
        values={
            "attempt": Expr.NEXT_ATTEMPT,
            "celery_task_id": Expr.NEXT_TASK_ID,
            "queued_at": Expr.NOW_PLUS_DELAY,
        },
    )
    ex = written.execution
    assert (ex.attempt, ex.celery_task_id) == (4, f"{ex_id}-4")
    assert round((ex.queued_at - ex.updated_at).total_seconds(), 3) == 2.0


@pytest.mark.parametrize(("steps", "share"), [(None, 33.33), (3, 20.0), (30, 3.13)])
def test_the_first_progress_is_the_input_steps_share_rounded_half_up_like_numeric(steps, share):
    parameters = (
        {} if steps is None else {"type": "pipeline", "steps": [{"name": str(i)} for i in range(steps)]}
    )
    repo, ex_id = _repo_with_execution(state="QUEUED", parameters=parameters)
    written = _to(
        repo,
        ex_id,
        S.RUNNING,
        expected_state=S.QUEUED,
        values={
            "progress_percentage": Expr.FIRST_PROGRESS,
            "started_at": Expr.FIRST_STARTED_AT,
            "deadline_at": Expr.DEADLINE,
        },
    )
    ex = written.execution
    assert ex.progress_percentage == share
    assert ex.started_at == ex.updated_at and (ex.deadline_at - ex.started_at).total_seconds() == 3600


def test_a_claim_reads_the_agents_settings_or_none_when_the_agent_is_gone():
    repo, ex_id = _repo_with_execution(state="QUEUED")
    written = _to(repo, ex_id, S.RUNNING, expected_state=S.QUEUED, with_agent=True)
    assert written.agent == {
        "model": "m",
        "system_prompt": "be brief",
        "parameters": {"provider": "simulated"},
        "daily_token_budget": None,
        "tokens_today": None,
    }
    repo.agents.clear()
    assert _to(repo, ex_id, S.PAUSING, expected_state=S.RUNNING, with_agent=True).agent is None


def test_a_create_needs_the_agent_in_the_tenant_and_skips_a_used_idempotency_key():
    repo = FakeRepository()
    agent = repo.add_agent(tenant="t1")

    def create(tenant: str | None, key: str | None = None, skip: bool = False):  # type: ignore[no-untyped-def]
        values = {
            "id": uuid.uuid4(),
            "agent_id": agent.id,
            "tenant": "t1",
            "parameters": {},
            "state": "PENDING",
            "idempotency_key": key,
        }
        return repo.create_execution(
            values,
            history=[(None, "PENDING", "created")],
            events=[EMIT.state_changed(None, "created")],
            agent_tenant=tenant,
            skip_if_key_exists=skip,
        ).execution

    assert create("t2") is None and repo.history == []
    assert create("t1", "k") is not None and create("t1", None, skip=True) is not None
    assert create("t1", "k", skip=True) is None
    assert len(repo.rows) == 2 and [h.id for h in repo.history] == [1, 2]


def test_event_ids_increase_and_returned_rows_are_detached_copies():
    repo, ex_id = _repo_with_execution(state="QUEUED")
    written = _to(
        repo,
        ex_id,
        S.RUNNING,
        expected_state=S.QUEUED,
        events=[EMIT.state_changed(S.QUEUED, "claimed"), EMIT.progress()],
    )
    assert [e.id for e in written.events] == [1, 2]
    assert [e.type for e in repo.events] == [events.STATE_CHANGED, events.PROGRESS]
    written.execution.context["mutated"] = True
    assert repo.get_by_id(ex_id).context == {}  # type: ignore[union-attr]


def test_the_fakes_column_defaults_are_the_tables_server_defaults():
    table = {}
    for column in Execution.__table__.columns:  # type: ignore[attr-defined]
        arg = None if column.server_default is None else column.server_default.arg
        if isinstance(arg, str | TextClause):  # not now(): the fake stamps created_at and updated_at itself
            text = arg if isinstance(arg, str) else arg.text
            table[column.key] = {"'{}'::jsonb": {}}.get(text, int(text) if text.isdigit() else text)
    assert table == SERVER_DEFAULTS
