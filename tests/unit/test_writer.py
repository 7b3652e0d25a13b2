"""The transition writer's SQL without a database: statement shapes, argument checks, bound
parameters, the payload definition the SQL and Python share, and the Celery task id in both."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from app import events
from app.execution import writer
from app.execution.dispatch import celery_task_id
from app.execution.event_emitter import (
    PAYLOADS,
    EventSpec,
    ExecutionEventEmitter,
    render_payload,
    sql_payload,
)
from app.execution.repository import ExecutionRepository
from app.execution.state_manager import entry_params, entry_values
from app.execution.transitions import sources_of
from app.execution.writer import Expr, Shape, Written, build_sql
from app.models import Execution
from app.schemas import ExecutionState as S
from tests.unit.fakes import EXPRESSIONS

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
EMIT = ExecutionEventEmitter(None)  # type: ignore[arg-type]  # the specs need no bus


def _update_shape(**kw: Any) -> Shape:
    base: dict[str, Any] = dict(
        kind="update",
        guards=("attempt", "state"),
        values=(("state", None), ("updated_at", str(Expr.NOW))),
        events=((events.STATE_CHANGED, False), (events.COMPLETED, False)),
        history=1,
    )
    return Shape(**(base | kw))


def test_an_update_with_events_is_one_guarded_update_with_history_and_event_ctes():
    sql = build_sql(_update_shape())
    assert sql.startswith("WITH u AS (UPDATE executions x SET state = %(v_state)s, updated_at = now() ")
    assert (
        "WHERE x.id = %(p_id)s AND x.attempt = %(g_attempt)s AND x.state = %(g_state)s RETURNING x.*)" in sql
    )
    assert "h AS (INSERT INTO execution_state_history (execution_id, from_state, to_state, reason)" in sql
    assert "%(h_from_0)s::text" in sql
    assert "e AS (INSERT INTO execution_events (execution_id, type, payload)" in sql
    assert f"'{events.STATE_CHANGED}'::text" in sql and f"'{events.COMPLETED}'::text" in sql
    assert sql.endswith("FROM u CROSS JOIN e ORDER BY e.id")
    assert "FOR UPDATE" not in sql


def test_an_update_from_sources_locks_the_row_and_reads_the_state_it_replaces():
    sql = build_sql(_update_shape(guards=("attempt",), sources=True, events=((events.STATE_CHANGED, True),)))
    assert "o AS (SELECT id, state AS previous_state FROM executions WHERE id = %(p_id)s FOR UPDATE)" in sql
    assert "x.state = ANY(%(p_sources)s::text[]) RETURNING x.*, o.previous_state)" in sql
    assert "u.previous_state AS f" in sql  # the history row's from_state
    assert "'previous_state', u.previous_state" in sql  # the event's previous state


def test_progress_is_guarded_as_at_most_the_new_percentage():
    sql = build_sql(_update_shape(guards=("progress_percentage", "state"), events=(), history=0))
    assert "x.progress_percentage <= %(g_progress_percentage)s" in sql
    assert " h AS " not in sql and " e AS " not in sql and sql.endswith("FROM u")


def test_a_claim_also_reads_the_agents_model_settings():
    sql = build_sql(_update_shape(with_agent=True))
    assert (
        "jsonb_build_object('model', a.model, 'system_prompt', a.system_prompt, 'parameters', a.parameters, "
        "'tools', a.tools, 'daily_token_budget', a.daily_token_budget, 'tokens_today', " in sql
    )


def test_a_write_with_usage_adds_it_to_the_execution_and_to_its_agents_day_in_the_same_statement():
    sql = build_sql(_update_shape(usage=True))
    assert (
        "INSERT INTO agent_usage_daily AS g" in sql and sql.count("ON CONFLICT (agent_id, day, shard)") == 1
    )
    assert "FROM u ON CONFLICT" in sql  # only when the guarded UPDATE matched
    assert "usage_total" not in build_sql(_update_shape())


def test_an_insert_with_a_conflict_key_does_nothing_for_a_used_idempotency_key():
    shape = Shape(
        kind="insert",
        guards=(),
        values=(("id", None), ("created_at", str(Expr.NOW))),
        events=(),
        history=2,
        tenant_guard=True,
        on_conflict_key=True,
    )
    sql = build_sql(shape)
    assert "INSERT INTO executions (id, created_at) SELECT %(v_id)s::UUID, now() FROM agents a" in sql
    assert "WHERE a.id = %(p_agent_id)s AND a.tenant = %(p_agent_tenant)s" in sql
    assert (
        "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *"
        in sql
    )


def test_an_insert_without_a_conflict_key_lets_a_duplicate_fail():
    sql = build_sql(Shape(kind="insert", guards=(), values=(("id", None),), events=(), history=0))
    assert "ON CONFLICT" not in sql and "a.tenant" not in sql


def test_a_value_for_a_column_executions_lacks_is_refused():
    with pytest.raises(ValueError, match="no column 'nope'"):
        writer._split({"nope": 1})
    with pytest.raises(ValueError, match="no column 'nope'"):
        writer.update(None, uuid.uuid4(), guards={}, values={"nope": 1})  # type: ignore[arg-type]


def test_attribute_names_become_column_names_and_plain_values_parameters():
    pairs, params = writer._split({"metadata_": {"k": 1}, "state": "RUNNING", "updated_at": Expr.NOW})
    assert pairs == (("metadata", None), ("state", None), ("updated_at", "now()"))
    assert isinstance(params["v_metadata"], Jsonb) and params["v_state"] == "RUNNING"
    assert '"metadata" = %(v_metadata)s' in build_sql(_update_shape(values=pairs, events=(), history=0))


@pytest.mark.parametrize("expr", [Expr.NEXT_ATTEMPT, Expr.NEXT_TASK_ID, Expr.MERGE_CONTEXT], ids=str)
def test_an_insert_that_reads_the_row_it_inserts_is_refused(expr):
    with pytest.raises(ValueError, match="no earlier values"):
        writer.insert(
            None,  # type: ignore[arg-type]  # refused before any connection is used
            {"id": uuid.uuid4(), "attempt": expr},
            agent_id=uuid.uuid4(),
            agent_tenant=None,
            events=[],
            history=[],
        )


# ------------------------------------------------- parameters, through the real repository


class _Session:
    """A session factory and session that give the unit of work a connection nobody uses."""

    def __call__(self) -> _Session:
        return self

    def connection(self, execution_options: Any = None) -> None:
        return None

    commit = rollback = close = lambda self: None


EX_ID, AGENT_ID = uuid.uuid4(), uuid.uuid4()


def claim(repo: ExecutionRepository) -> Any:
    values = entry_values(S.RUNNING) | {"progress_percentage": Expr.FIRST_PROGRESS}
    events_ = [EMIT.state_changed(S.QUEUED, "claimed"), EMIT.progress()]
    return repo.transition(
        EX_ID,
        S.RUNNING,
        expected_state=S.QUEUED,
        expected_attempt=1,
        reason="claimed",
        values=values,
        events=events_,
        with_agent=True,
    )


def retry(repo: ExecutionRepository) -> Any:
    return repo.transition(
        EX_ID,
        S.QUEUED,
        expected_state=S.RUNNING,
        expected_attempt=1,
        reason="retry",
        values=entry_values(S.QUEUED, delay=1.5),
        params=entry_params(S.QUEUED, delay=1.5),
        events=[EMIT.state_changed(S.RUNNING, "retry")],
    )


def finish(repo: ExecutionRepository) -> Any:
    events_ = [
        EMIT.progress(),
        EMIT.state_changed(None, "completed", previous_from_row=True),
        EMIT.completed(),
    ]
    return repo.transition(
        EX_ID,
        S.COMPLETED,
        expected_state=None,
        sources=sources_of(S.COMPLETED),
        expected_attempt=1,
        tenant="t",
        values={"result": {"output": "x"}},
        reason="completed",
        events=events_,
    )


def progress(repo: ExecutionRepository) -> Any:
    return repo.record_progress(EX_ID, 50.0, "half", {"k": 1}, events=[EMIT.progress()], expected_attempt=1)


def checkpoint(repo: ExecutionRepository) -> Any:
    return repo.save_checkpoint(EX_ID, 1, {"steps": {}})


def create(repo: ExecutionRepository) -> Any:
    values = {
        "id": EX_ID,
        "agent_id": AGENT_ID,
        "parameters": {},
        "metadata_": {},
        "state": "QUEUED",
        "created_at": Expr.NOW,
        "celery_task_id": celery_task_id(EX_ID, 1),
    }
    history = [(None, "PENDING", "created"), ("PENDING", "QUEUED", "submitted")]
    events_ = [EMIT.state_changed(None, "created", new_state=S.PENDING), EMIT.state_changed(S.PENDING, "x")]
    return repo.create_execution(
        values, history=history, events=events_, agent_tenant="t", skip_if_key_exists=True
    )


def _capture_run(calls: list[tuple[str, dict[str, Any]]]) -> Any:
    def run(connection: Any, sql: str, params: dict[str, Any]) -> Written:
        calls.append((sql, params))
        return Written(None, [])

    return run


@pytest.mark.parametrize(
    "write", [claim, retry, finish, progress, checkpoint, create], ids=lambda f: f.__name__
)
def test_every_placeholder_of_a_repository_write_has_a_parameter(write, monkeypatch):
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(writer, "_run", _capture_run(calls))  # the statement, instead of running it
    write(ExecutionRepository(_Session()))  # type: ignore[arg-type]
    [(sql, params)] = calls
    assert set(PLACEHOLDER.findall(sql)) <= set(params)
    assert all(not isinstance(v, dict) for v in params.values()), "a dict must be bound as Jsonb"


# --------------------------------------------------------------- the payload definition


def _row() -> Execution:
    return Execution(
        id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        state="RUNNING",
        progress_percentage=40.0,
        progress_message="Step a",
        result={"output": "o"},
        error_message="e",
    )


def _specs() -> list[EventSpec]:
    return [
        EMIT.state_changed(S.QUEUED, "claimed"),
        EMIT.state_changed(None, "x", previous_from_row=True),
        EMIT.state_changed(None, "created", new_state=S.PENDING),
        EMIT.progress(),
        EMIT.completed(),
    ]


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: f"{s.type}-{s.previous_from_row}-{sorted(s.static)}")
def test_the_sql_payload_and_the_python_payload_have_the_same_keys_from_the_same_columns(spec):
    sql = sql_payload(spec.type, spec.previous_from_row, static="%(e_static_0)s::jsonb")
    from_row = dict(re.findall(r"'(\w+)', u\.(\w+)", sql))
    assert len(from_row) == sql.count("', u.")
    row = _row()
    python = render_payload(spec, row, previous_state="QUEUED")
    assert set(from_row) | set(spec.static) == set(python)
    for key, column in from_row.items():
        if key not in spec.static:
            expected = "QUEUED" if column == "previous_state" else getattr(row, column)
            assert python[key] == (str(expected) if f"u.{column}::text" in sql else expected), key


def test_every_event_type_has_a_payload_definition():
    assert set(PAYLOADS) == set(events.EVENT_TYPES)


# ------------------------------------------------------------------------- task ids


def _evaluate_concatenation(sql: str, row: dict[str, Any]) -> str:
    """The value of a `||` concatenation of x.<col>::text, 'literals' and (x.<col> + n)."""
    out = []
    for part in sql.split(" || "):
        if m := re.fullmatch(r"x\.(\w+)::text", part):
            out.append(str(row[m[1]]))
        elif m := re.fullmatch(r"'([^']*)'", part):
            out.append(m[1])
        elif m := re.fullmatch(r"\(x\.(\w+) \+ (\d+)\)", part):
            out.append(str(row[m[1]] + int(m[2])))
        else:
            raise AssertionError(f"unexpected SQL in a task id: {part!r}")
    return "".join(out)


@pytest.mark.parametrize("attempt", [0, 1, 7])
def test_the_next_task_id_in_sql_is_the_celery_task_id_of_the_next_attempt(attempt):
    row = {"id": uuid.uuid4(), "attempt": attempt}
    assert _evaluate_concatenation(Expr.NEXT_TASK_ID, row) == celery_task_id(row["id"], attempt + 1)


def test_the_fake_computes_the_next_task_id_with_the_same_function():
    row = {"id": uuid.uuid4(), "attempt": 2}
    assert EXPRESSIONS[Expr.NEXT_TASK_ID](row, None, {}) == celery_task_id(row["id"], 3) == f"{row['id']}-3"
