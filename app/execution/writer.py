"""The transition writer: an execution row, its history rows and its event rows in ONE statement.

    WITH u AS (UPDATE executions SET .. WHERE <guards> RETURNING *              -- update()
               | INSERT INTO executions SELECT .. FROM agents WHERE .. RETURNING *),  -- insert()
         h AS (INSERT INTO execution_state_history .. SELECT .. FROM u),
         e AS (INSERT INTO execution_events .. SELECT .. FROM u ORDER BY .. RETURNING ..)
    SELECT u.*, e.* FROM u CROSS JOIN e ORDER BY e.id

Data-modifying CTEs run to completion exactly once, so the writes commit together or
not at all; when a guard does not match (or the agent does not exist), `u` is empty and
nothing is written. Event payloads come from `event_emitter.PAYLOADS`, the one
definition of every payload: fields read from the written row, merged with the part
known beforehand (a JSONB parameter).

The SQL is plain text built from a `Shape` (which columns are guarded and set, and how;
which events; how many history rows), once per shape and process, and run through the
driver with parameters only: no SQL construction, no compilation and no private API on
the hot path. psycopg prepares a statement on the server after a few runs, so PostgreSQL
does not plan it again either. Column names come from the ORM table, values are always
parameters, and SQL expressions are the named members of `Expr`, never caller text.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from app.execution.event_emitter import EventSpec, sql_payload
from app.models import Execution, ExecutionEvent

# executions column -> ORM attribute (they differ for metadata / metadata_).
ATTRIBUTE_OF: dict[str, str] = {attr.columns[0].key: attr.key for attr in sa_inspect(Execution).column_attrs}
COLUMN_OF: dict[str, str] = {attr: column for column, attr in ATTRIBUTE_OF.items()}
_JSON_COLUMNS = frozenset({"parameters", "context", "result", "metadata", "required_action"})
# executions column -> its SQL type, for parameters whose type the statement cannot infer.
SQL_TYPE: dict[str, str] = {
    c.key: c.type.compile(dialect=postgresql.dialect())
    for c in Execution.__table__.columns  # type: ignore[attr-defined]
}
History = tuple[str | None, str, str | None]  # from_state, to_state, reason


class Expr(str):
    """A named SQL expression usable as a new column value; its text is fixed here, never given."""

    NOW: Expr
    NEXT_ATTEMPT: Expr
    NEXT_TASK_ID: Expr
    NOW_PLUS_DELAY: Expr
    FIRST_STARTED_AT: Expr
    DEADLINE: Expr
    MERGE_CONTEXT: Expr
    FIRST_PROGRESS: Expr
    CANCEL_CODE: Expr
    ADD_PROMPT_TOKENS: Expr
    ADD_COMPLETION_TOKENS: Expr
    ADD_TOTAL_TOKENS: Expr


Expr.NOW = Expr("now()")
Expr.NEXT_ATTEMPT = Expr("x.attempt + 1")
Expr.NEXT_TASK_ID = Expr("x.id::text || '-' || (x.attempt + 1)")
Expr.NOW_PLUS_DELAY = Expr("now() + make_interval(secs => %(delay_seconds)s::float8)")  # param: delay_seconds
# The moment the claim really took the row (after any wait for a concurrency slot's lock),
# not the start of its statement: a claim that waited for a slot starts after the run that freed it.
Expr.FIRST_STARTED_AT = Expr("coalesce(x.started_at, clock_timestamp())")
Expr.DEADLINE = Expr("now() + x.timeout_seconds * interval '1 second'")
Expr.MERGE_CONTEXT = Expr("x.context || %(context_update)s::jsonb")  # param: context_update
# The input step's share of a run, 1 / (steps + 2) rounded to 0.01, or what an earlier
# attempt reached if more: progress never goes back, across attempts.
Expr.ADD_PROMPT_TOKENS = Expr("x.prompt_tokens + %(usage_prompt)s::bigint")  # param: usage_prompt
Expr.ADD_COMPLETION_TOKENS = Expr("x.completion_tokens + %(usage_completion)s::bigint")
Expr.ADD_TOTAL_TOKENS = Expr("x.total_tokens + %(usage_total)s::bigint")
# A cancel keeps the more precise code its CANCELLING was given (interrupted), else cancelled.
Expr.CANCEL_CODE = Expr("coalesce(x.error_code, 'cancelled')")
Expr.FIRST_PROGRESS = Expr(
    "greatest(x.progress_percentage,"
    " round(100.0 / (coalesce(jsonb_array_length(x.parameters -> 'steps'), 1) + 2), 2)::float8)"
)


@dataclass(frozen=True)
class Shape:
    """Everything that makes two writes the same statement with other parameters."""

    kind: str  # "update" or "insert"
    guards: tuple[str, ...]  # columns that must equal a parameter (progress_percentage: at most it)
    values: tuple[tuple[str, str | None], ...]  # column -> Expr text, or None for a parameter
    events: tuple[tuple[str, bool], ...]  # event type, previous_state read from the row
    history: int  # number of history rows
    sources: bool = False  # update: the row must be in one of p_sources; lock it and read its state
    with_agent: bool = False  # also return the agent's model settings as `agent`
    tenant_guard: bool = False  # insert: the agent must belong to p_agent_tenant
    on_conflict_key: bool = False  # insert: nothing when (tenant, idempotency_key) exists
    take_slot: bool = False  # update: only if a concurrency slot is free (the claim)
    release_slot: bool = False  # update: leaves a slot; return whether someone waits for one
    release_task: bool = False  # update: ends it; return whether an execution waits for its task
    usage: bool = False  # update: add %(usage_*)s tokens to the execution and its agent's day


@dataclass
class Written:
    """What one write returned: the row (None when nothing matched), its events, the state it replaced."""

    execution: Execution | None
    events: list[ExecutionEvent]
    previous_state: str | None = None
    agent: dict[str, Any] | None = None
    waiters: bool = False  # a write that gave back a slot: executions wait for one
    task_waiters: bool = False  # a write that ended an execution: another waits for its task_id


_sql: dict[Shape, str] = {}
_lock = threading.Lock()
_MAX_SHAPES = 512


def _quote(name: str) -> str:
    return f'"{name}"' if name == "metadata" else name


def _set_clause(values: tuple[tuple[str, str | None], ...]) -> str:
    return ", ".join(f"{_quote(col)} = {expr or f'%(v_{col})s'}" for col, expr in values)


def _guard_clause(guards: tuple[str, ...]) -> list[str]:
    return [
        f"x.{col} <= %(g_{col})s" if col == "progress_percentage" else f"x.{col} = %(g_{col})s"
        for col in guards
    ]


_TODAY = "(now() AT TIME ZONE 'UTC')::date"  # usage and budgets count UTC days
# The slot functions of migration 0005: they lock and count only when a limit applies.
_TAKE_SLOT = "agentexec_take_slot(x.tenant, x.agent_id, %(p_tenant_limit)s::int)"
_RELEASE_SLOT = "agentexec_release_slot(u.tenant, u.agent_id, %(p_tenant_limit)s::int) AS waiters"
# Most executions have no task_id: no function call (and no lock) for them.
_TASK_RELEASED = "agentexec_task_released(u.tenant, u.task_id)"
_RELEASE_TASK = f"CASE WHEN u.task_id IS NULL THEN false ELSE {_TASK_RELEASED} END AS task_waiters"


def _update_cte(shape: Shape) -> str:
    where = ["x.id = %(p_id)s", *_guard_clause(shape.guards)]
    if shape.take_slot:  # last: the planner runs costly conditions after the cheap ones
        where.append(_TAKE_SLOT)
    if not shape.sources:
        return (
            f"u AS (UPDATE executions x SET {_set_clause(shape.values)} "
            f"WHERE {' AND '.join(where)} RETURNING x.*)"
        )
    # The state being replaced, read under the row lock, for the history row and the event.
    return (
        "o AS (SELECT id, state AS previous_state FROM executions WHERE id = %(p_id)s FOR UPDATE), "
        f"u AS (UPDATE executions x SET {_set_clause(shape.values)} FROM o "
        f"WHERE {' AND '.join(where)} AND x.id = o.id AND x.state = ANY(%(p_sources)s::text[]) "
        "RETURNING x.*, o.previous_state)"
    )


def _insert_cte(shape: Shape) -> str:
    columns = [col for col, _ in shape.values]
    if any(expr and "x." in expr for _, expr in shape.values):
        raise ValueError("an inserted row has no earlier values to read")
    selected = ", ".join(expr or f"%(v_{col})s::{SQL_TYPE[col]}" for col, expr in shape.values)
    tenant = " AND a.tenant = %(p_agent_tenant)s" if shape.tenant_guard else ""
    # An agent whose daily token budget is spent takes no new execution (the service says 429).
    tenant += (
        " AND CASE WHEN a.daily_token_budget IS NULL THEN true ELSE coalesce((SELECT sum(d.total_tokens)"
        f" FROM agent_usage_daily d WHERE d.agent_id = a.id AND d.day = {_TODAY}), 0)"
        " < a.daily_token_budget END"
    )
    conflict = (
        " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        if shape.on_conflict_key
        else ""
    )
    return (
        f"u AS (INSERT INTO executions ({', '.join(_quote(c) for c in columns)}) "
        # FOR KEY SHARE: a delete of the agent (FOR UPDATE) waits for this insert, or it for the delete.
        f"SELECT {selected} FROM agents a WHERE a.id = %(p_agent_id)s{tenant} FOR KEY SHARE"
        f"{conflict} RETURNING *)"
    )


def _history_cte(shape: Shape) -> str:
    rows = []
    for i in range(shape.history):
        from_state = "u.previous_state" if shape.sources and i == 0 else f"%(h_from_{i})s::text"
        rows.append(
            f"SELECT {i} AS ord, u.id, {from_state} AS f, %(h_to_{i})s::text AS t, "
            f"%(h_reason_{i})s::text AS r FROM u"
        )
    return (
        "h AS (INSERT INTO execution_state_history (execution_id, from_state, to_state, reason) "
        f"SELECT id, f, t, r FROM ({' UNION ALL '.join(rows)}) hs ORDER BY ord)"
    )


def _events_cte(shape: Shape) -> str:
    rows = []
    for i, (event_type, previous_from_row) in enumerate(shape.events):
        payload = sql_payload(event_type, previous_from_row, static=f"%(e_static_{i})s::jsonb")
        rows.append(f"SELECT {i} AS ord, u.id, '{event_type}'::text AS type, {payload} AS payload FROM u")
    return (
        "e AS (INSERT INTO execution_events (execution_id, type, payload) "
        f"SELECT id, type, payload FROM ({' UNION ALL '.join(rows)}) es ORDER BY ord "
        "RETURNING id, type, payload, created_at)"
    )


_AGENT = (
    "(SELECT jsonb_build_object('model', a.model, 'system_prompt', a.system_prompt, "
    "'parameters', a.parameters, 'tools', a.tools, 'daily_token_budget', a.daily_token_budget, "
    "'tokens_today', "
    "CASE WHEN a.daily_token_budget IS NOT NULL THEN (SELECT sum(d.total_tokens) FROM agent_usage_daily d"
    f" WHERE d.agent_id = a.id AND d.day = {_TODAY}) END) "
    "FROM agents a WHERE a.id = u.agent_id) AS agent"
)
# Usage recorded by a write (a step's checkpoint, a run's end) is added to the agent's day.
_DAILY_USAGE = (
    "d AS (INSERT INTO agent_usage_daily AS g "
    "(agent_id, day, shard, tenant, executions, prompt_tokens, completion_tokens, total_tokens) "
    f"SELECT u.agent_id, {_TODAY}, hashtext(u.id::text) & 15, u.tenant, %(usage_ended)s::bigint, "
    "%(usage_prompt)s::bigint, %(usage_completion)s::bigint, %(usage_total)s::bigint FROM u "
    "ON CONFLICT (agent_id, day, shard) DO UPDATE SET executions = g.executions + EXCLUDED.executions, "
    "prompt_tokens = g.prompt_tokens + EXCLUDED.prompt_tokens, "
    "completion_tokens = g.completion_tokens + EXCLUDED.completion_tokens, "
    "total_tokens = g.total_tokens + EXCLUDED.total_tokens)"
)


def build_sql(shape: Shape) -> str:
    """The statement of a shape (pure: tests read it)."""
    ctes = [_update_cte(shape) if shape.kind == "update" else _insert_cte(shape)]
    if shape.history:
        ctes.append(_history_cte(shape))
    if shape.usage:
        ctes.append(_DAILY_USAGE)
    selected = ["u.*"]
    if shape.with_agent:
        selected.append(_AGENT)
    released = [
        sql for on, sql in ((shape.release_slot, _RELEASE_SLOT), (shape.release_task, _RELEASE_TASK)) if on
    ]
    if released:
        ctes.append(f"w AS (SELECT {', '.join(released)} FROM u)")
        selected.append("w.*")
    if shape.events:
        ctes.append(_events_cte(shape))
        selected.append(
            "e.id AS ev_id, e.type AS ev_type, e.payload AS ev_payload, e.created_at AS ev_created_at"
        )
        source = "u CROSS JOIN e ORDER BY e.id"
    else:
        source = "u"
    if released:
        source = source.replace("u", "u CROSS JOIN w", 1)
    return f"WITH {', '.join(ctes)} SELECT {', '.join(selected)} FROM {source}"


def _statement(shape: Shape) -> str:
    sql = _sql.get(shape)
    if sql is None:
        sql = build_sql(shape)
        with _lock:
            if len(_sql) >= _MAX_SHAPES:
                _sql.clear()
            _sql[shape] = sql
    return sql


def _param(column: str, value: Any) -> Any:
    return Jsonb(value) if column in _JSON_COLUMNS and value is not None else value


def _split(values: Mapping[str, Any]) -> tuple[tuple[tuple[str, str | None], ...], dict[str, Any]]:
    """(column, Expr or None) pairs in a stable order, and the parameters of the plain values."""
    pairs: list[tuple[str, str | None]] = []
    params: dict[str, Any] = {}
    for key, value in values.items():
        column = COLUMN_OF.get(key, key)
        if column not in ATTRIBUTE_OF:
            raise ValueError(f"executions has no column {column!r}")
        if isinstance(value, Expr):
            pairs.append((column, str(value)))
        else:
            pairs.append((column, None))
            params[f"v_{column}"] = _param(column, value)
    return tuple(sorted(pairs)), params


def _log_params(events: list[EventSpec], history: list[History]) -> dict[str, Any]:
    params: dict[str, Any] = {f"e_static_{i}": Jsonb(spec.static) for i, spec in enumerate(events)}
    for i, (from_state, to_state, reason) in enumerate(history):
        params |= {f"h_from_{i}": from_state, f"h_to_{i}": to_state, f"h_reason_{i}": reason}
    return params


# A write with usage adds it to the execution's counters: these columns, these parameters.
USAGE_VALUES: dict[str, Expr] = {
    "prompt_tokens": Expr.ADD_PROMPT_TOKENS,
    "completion_tokens": Expr.ADD_COMPLETION_TOKENS,
    "total_tokens": Expr.ADD_TOTAL_TOKENS,
}


def usage_params(usage: Mapping[str, int]) -> dict[str, int]:
    """The named parameters of a write's usage (`USAGE_VALUES` and the day's rollup)."""
    return {
        "usage_prompt": int(usage.get("prompt_tokens", 0)),
        "usage_completion": int(usage.get("completion_tokens", 0)),
        "usage_total": int(usage.get("total_tokens", 0)),
        "usage_ended": int(usage.get("ended", 0)),
    }


def update(
    connection: Connection,
    execution_id: uuid.UUID,
    *,
    guards: Mapping[str, Any],
    values: Mapping[str, Any],
    events: list[EventSpec] = (),  # type: ignore[assignment]
    history: list[History] = (),  # type: ignore[assignment]
    sources: list[str] | None = None,
    params: Mapping[str, Any] | None = None,
    with_agent: bool = False,
    slot: str | None = None,
    tenant_limit: int = 0,
    release_task: bool = False,
    usage: Mapping[str, int] | None = None,
) -> Written:
    """UPDATE the execution where every guard holds; log history and events with it.

    `guards` are column -> required value (`progress_percentage` means "at most");
    `values` are column or attribute -> new value, a plain value or an `Expr` whose
    named parameters are in `params`. With `sources` the row must be in one of those
    states: the statement locks it and reads the state it replaces (the first history
    row's from_state, and `previous_state` of events that ask for it). `slot="take"`
    writes only if a concurrency slot is free; `slot="release"` (a write out of RUNNING or
    PAUSING) returns in `waiters` whether executions wait for one. `tenant_limit` is
    TENANT_MAX_CONCURRENCY, for tenants without their own limit. `release_task` (a write
    that ends the execution) returns in `task_waiters` whether another waits for its task_id.
    `usage` ({prompt_tokens, completion_tokens, total_tokens, ended}) is added to the
    execution's token counters and to its agent's usage of the day by the same statement.
    """
    if usage is not None:
        values = dict(values) | USAGE_VALUES
    pairs, bound = _split(values)
    shape = Shape(
        kind="update",
        guards=tuple(sorted(guards)),
        values=pairs,
        events=tuple((e.type, e.previous_from_row) for e in events),
        history=len(history),
        sources=sources is not None,
        with_agent=with_agent,
        take_slot=slot == "take",
        release_slot=slot == "release",
        release_task=release_task,
        usage=usage is not None,
    )
    if usage is not None:
        bound |= usage_params(usage)
    if slot is not None:
        bound["p_tenant_limit"] = tenant_limit
    bound |= {"p_id": execution_id} | {f"g_{k}": v for k, v in guards.items()}
    if sources is not None:
        bound["p_sources"] = list(sources)
    bound |= _log_params(list(events), list(history))
    bound |= {k: Jsonb(v) if isinstance(v, dict) else v for k, v in (params or {}).items()}
    return _run(connection, _statement(shape), bound)


def insert(
    connection: Connection,
    values: Mapping[str, Any],
    *,
    agent_id: uuid.UUID,
    agent_tenant: str | None,
    events: list[EventSpec],
    history: list[History],
    skip_if_key_exists: bool = False,
    params: Mapping[str, Any] | None = None,
) -> Written:
    """INSERT the execution if its agent exists (in `agent_tenant`); log history and events.

    Nothing is written (and `execution` is None) when the agent does not exist, or with
    `skip_if_key_exists` when the tenant already has an execution with this idempotency key.
    `params` are the named parameters of `Expr` values (a delayed start's `delay_seconds`).
    """
    pairs, bound = _split(values)
    shape = Shape(
        kind="insert",
        guards=(),
        values=pairs,
        events=tuple((e.type, e.previous_from_row) for e in events),
        history=len(history),
        tenant_guard=agent_tenant is not None,
        on_conflict_key=skip_if_key_exists,
    )
    bound |= {"p_agent_id": agent_id, "p_agent_tenant": agent_tenant} | _log_params(events, history)
    bound |= dict(params or {})
    return _run(connection, _statement(shape), bound)


# Through the mappers' documented `class_manager` (the ORM's own way to make a loaded instance).
_new_execution = sa_inspect(Execution).class_manager.new_instance
_new_event = sa_inspect(ExecutionEvent).class_manager.new_instance


def execution_from_row(row: Mapping[str, Any]) -> Execution:
    """A detached Execution holding the columns of a row.

    Built as the ORM builds a loaded row (a new instance, its attributes placed in its
    dict): the same object to read, without the instrumented __init__'s per-attribute
    events, which cost ~10 times as much CPU on every write of the hot path."""
    execution: Execution = _new_execution()
    fields = execution.__dict__
    for column, attr in ATTRIBUTE_OF.items():
        fields[attr] = row[column]
    return execution


def _event(execution_id: uuid.UUID, row: Mapping[str, Any]) -> ExecutionEvent:
    event: ExecutionEvent = _new_event()
    event.__dict__.update(
        id=row["ev_id"],
        execution_id=execution_id,
        type=row["ev_type"],
        payload=row["ev_payload"],
        created_at=row["ev_created_at"],
    )
    return event


def _run(connection: Connection, sql: str, params: dict[str, Any]) -> Written:
    # Straight to the driver: the statement is fixed text, so SQLAlchemy's execution
    # context and result wrapping would only add CPU. Preparing makes PostgreSQL parse and
    # plan each shape once per connection, unless the engine turned preparing off
    # (`prepare_threshold=None`: DATABASE_PREPARED_STATEMENTS=false, for PgBouncer).
    driver = connection.connection.driver_connection
    prepare = driver.prepare_threshold is not None  # type: ignore[union-attr]
    with driver.cursor(row_factory=dict_row) as cursor:  # type: ignore[union-attr]
        rows = cursor.execute(sql, params, prepare=prepare).fetchall()
    if not rows:
        return Written(None, [])
    first = rows[0]
    execution = execution_from_row(first)
    logged = [_event(execution.id, r) for r in rows if "ev_id" in r]
    return Written(
        execution,
        logged,
        first.get("previous_state"),
        first.get("agent"),
        bool(first.get("waiters")),
        bool(first.get("task_waiters")),
    )
