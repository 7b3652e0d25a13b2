"""Logged writes: an execution row, its history rows and its event rows in ONE statement.

    WITH u AS (UPDATE executions SET .. WHERE <guards> RETURNING *      -- logged_update
               | INSERT INTO executions SELECT .. FROM <agent> RETURNING *),  -- logged_insert
         h AS (INSERT INTO execution_state_history .. SELECT .. FROM u),
         e AS (INSERT INTO execution_events .. SELECT .. FROM u ORDER BY .. RETURNING ..)
    SELECT u.*, e.* FROM u CROSS JOIN e ORDER BY e.id

Data-modifying CTEs run to completion exactly once, so the writes commit together or
not at all; when a guard does not match (or the agent does not exist), `u` is empty and
nothing is written. Event payloads are the emitter's EventSpec: fields of the written
row (`jsonb_build_object`) merged with the part known beforehand (a JSONB parameter).

Building such a statement with SQLAlchemy costs far more CPU than running it, so each
shape (which columns are set and how, which guards, which events) is built once per
process and then run with parameters only (SQLAlchemy caches its compiled form).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sqlalchemy import (
    Float,
    Select,
    String,
    Table,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal,
    literal_column,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement

from app.execution.event_emitter import EventSpec
from app.models import Agent, Execution, ExecutionEvent, ExecutionStateHistory

EXECUTIONS: Table = Execution.__table__  # type: ignore[assignment]
HISTORY: Table = ExecutionStateHistory.__table__  # type: ignore[assignment]
EVENTS: Table = ExecutionEvent.__table__  # type: ignore[assignment]
AGENTS: Table = Agent.__table__  # type: ignore[assignment]
# ORM attribute -> column name of executions (they differ for metadata_), and back.
COLUMN_OF = {attr.key: attr.columns[0].key for attr in sa_inspect(Execution).column_attrs}
ATTRIBUTE_OF = {column: attr for attr, column in COLUMN_OF.items()}
_UUID_COLUMNS = frozenset({"id", "agent_id", "task_id"})
_MAX_SHAPES = 256

# A named parameter that SQL expressions in `values` may use (the QUEUED retry delay).
DELAY_SECONDS = bindparam("delay_seconds", type_=Float)


_shapes: dict[Any, Select[Any]] = {}
_lock = threading.Lock()
History = tuple[str | None, str, str | None]  # from_state, to_state, reason


def execution_from_row(mapping: Any) -> Execution:
    """A detached Execution holding the columns of a RETURNING row."""
    return Execution(**{attr: mapping[column] for column, attr in ATTRIBUTE_OF.items()})


def logged_update(
    session: Session,
    execution_id: uuid.UUID,
    *,
    guards: dict[str, Any],
    values: dict[str, Any],
    events: list[EventSpec],
    history: list[History] | None = None,
    params: dict[str, Any] | None = None,
    sources: list[str] | None = None,
) -> tuple[Execution | None, list[ExecutionEvent], str | None]:
    """UPDATE the execution, log history and events: (row, events, previous state), or
    (None, [], None) when no row matched the guards.

    `guards` are column -> required value (`progress_percentage` means "at most");
    `values` are attribute -> new value, a plain value or a SQL expression whose named
    parameters are given in `params`. With `sources` (instead of a `state` guard) the row
    must be in one of those states; the statement locks it, reads the state it replaces
    (the previous state of the history row and of events with `previous_from_row`) and
    returns it.
    """
    plain, exprs = _split(values)
    history = history or []
    key = ("update", tuple(sorted(guards)), _values_key(plain, exprs), _events_key(events), len(history),
           sources is not None)
    stmt = _cached(key, lambda: _with_log(_update_cte(guards, plain, exprs, sources is not None), events,
                                          len(history), history_from_row=sources is not None))
    bound = {"p_id": execution_id} | {f"g_{k}": v for k, v in guards.items()}
    if sources is not None:
        bound["p_sources"] = list(sources)
    return _run(session, stmt, bound | _value_params(plain, events, history) | (params or {}))


def logged_insert(
    session: Session,
    values: dict[str, Any],
    *,
    agent_id: uuid.UUID,
    agent_tenant: str | None,
    events: list[EventSpec],
    history: list[History],
) -> tuple[Execution | None, list[ExecutionEvent]]:
    """INSERT the execution if its agent exists (in the tenant), log history and events.

    (None, []) when the agent does not exist: then nothing was written. `values` may use
    SQL expressions that do not read a row (func.now()).
    """
    plain, exprs = _split(values)
    key = ("insert", agent_tenant is None, _values_key(plain, exprs), _events_key(events), len(history))
    stmt = _cached(key, lambda: _with_log(_insert_cte(plain, exprs, agent_tenant is not None), events,
                                          len(history)))
    bound = {"p_agent_id": agent_id, "p_agent_tenant": agent_tenant}
    row, logged, _ = _run(session, stmt, bound | _value_params(plain, events, history))
    return row, logged


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    plain = {COLUMN_OF.get(k, k): v for k, v in values.items() if not isinstance(v, ClauseElement)}
    exprs = {COLUMN_OF.get(k, k): v for k, v in values.items() if isinstance(v, ClauseElement)}
    return plain, exprs


def _events_key(events: list[EventSpec]) -> Any:
    return tuple((e.type, e.previous_from_row) for e in events)


def _values_key(plain: dict[str, Any], exprs: dict[str, Any]) -> Any:
    return tuple(sorted(plain)), tuple(sorted((k, _expression_key(v)) for k, v in exprs.items()))


def _value_params(plain: dict[str, Any], events: list[EventSpec], history: list[History]) -> dict[str, Any]:
    bound = {f"v_{k}": v for k, v in plain.items()}
    bound.update({f"p_static_{i}": spec.static for i, spec in enumerate(events)})
    for i, (from_state, to_state, reason) in enumerate(history):
        bound.update({f"p_from_{i}": from_state, f"p_to_{i}": to_state, f"p_reason_{i}": reason})
    return bound


def _cached(key: Any, build: Any) -> Select[Any]:
    stmt = _shapes.get(key)
    if stmt is None:
        stmt = build()
        with _lock:
            if len(_shapes) >= _MAX_SHAPES:
                _shapes.clear()
            _shapes[key] = stmt
    return stmt


def _run(
    session: Session, stmt: Select[Any], bound: dict[str, Any]
) -> tuple[Execution | None, list[ExecutionEvent], str | None]:
    rows = session.connection().execute(stmt, bound).mappings().all()
    if not rows:
        return None, [], None
    execution = execution_from_row(rows[0])
    logged = [
        ExecutionEvent(id=r["ev_id"], execution_id=execution.id, type=r["ev_type"], payload=r["ev_payload"],
                       created_at=r["ev_created_at"])
        for r in rows
    ]
    return execution, logged, rows[0].get("previous_state")


def _expression_key(expr: ClauseElement) -> Any:
    """The structure of an expression plus the values of its unnamed literals."""
    cache_key = expr._generate_cache_key()
    if cache_key is None:  # not cacheable: never reuse
        return object()
    anonymous = tuple(bp.effective_value for bp in cache_key.bindparams if bp.key.startswith("%("))
    try:
        hash(anonymous)
    except TypeError:
        return object()
    return cache_key.key, anonymous


def _column_values(plain: dict[str, Any], exprs: dict[str, Any]) -> dict[str, Any]:
    table = EXECUTIONS
    new_values: dict[str, Any] = {k: bindparam(f"v_{k}", type_=table.c[k].type) for k in plain}
    new_values.update(exprs)
    return new_values


def _update_cte(guards: dict[str, Any], plain: dict[str, Any], exprs: dict[str, Any], locked: bool) -> Any:
    table = EXECUTIONS
    row_id = bindparam("p_id", type_=table.c.id.type)
    where: list[Any] = [table.c.id == row_id]
    for column in guards:
        col, param = table.c[column], bindparam(f"g_{column}", type_=table.c[column].type)
        where.append(col <= param if column == "progress_percentage" else col == param)
    stmt = update(table).values(_column_values(plain, exprs))
    if not locked:
        return stmt.where(*where).returning(*table.c).cte("u")
    # UPDATE .. FROM (SELECT state .. FOR UPDATE): the state being replaced, read under the row lock.
    old = select(table.c.id, table.c.state.label("previous_state")).where(table.c.id == row_id)
    o = old.with_for_update().cte("o")
    sources = bindparam("p_sources", expanding=True, type_=table.c.state.type)
    return (
        stmt.where(*where, table.c.id == o.c.id, table.c.state.in_(sources))
        .returning(*table.c, o.c.previous_state)
        .cte("u")
    )


def _insert_cte(plain: dict[str, Any], exprs: dict[str, Any], tenant_guard: bool) -> Any:
    agent = select(AGENTS.c.id).where(AGENTS.c.id == bindparam("p_agent_id", type_=AGENTS.c.id.type))
    if tenant_guard:
        agent = agent.where(AGENTS.c.tenant == bindparam("p_agent_tenant", type_=AGENTS.c.tenant.type))
    found = agent.cte("a")
    values = _column_values(plain, exprs)
    columns = list(values)
    source = select(*[values[c].label(c) for c in columns]).select_from(found)
    return insert(EXECUTIONS).from_select(columns, source).returning(*EXECUTIONS.c).cte("u")


def _with_log(
    u: Any, events: list[EventSpec], history_rows: int, history_from_row: bool = False
) -> Select[Any]:
    """SELECT u.*, e.* with the event rows (and history rows) inserted from u."""
    sources = []
    for order, spec in enumerate(events):
        fields: list[Any] = []
        for key, column in spec.from_row.items():
            fields.append(literal_column(f"'{key}'"))
            fields.append(cast(u.c[column], Text) if column in _UUID_COLUMNS else u.c[column])
        # Known parts win over row fields (a creation event says PENDING for a row already QUEUED).
        payload = func.jsonb_build_object(*fields, type_=JSONB).op("||", return_type=JSONB)(
            bindparam(f"p_static_{order}", type_=JSONB)
        )
        sources.append(select(
            literal(order).label("ord"),
            u.c.id.label("execution_id"),
            literal(spec.type, String).label("type"),
            payload.label("payload"),
        ))
    src = (sources[0] if len(sources) == 1 else union_all(*sources)).subquery("src")
    e = (
        insert(EVENTS)
        .from_select(
            ["execution_id", "type", "payload"],
            select(src.c.execution_id, src.c.type, src.c.payload).order_by(src.c.ord),
        )
        .returning(EVENTS.c.id, EVENTS.c.type, EVENTS.c.payload, EVENTS.c.created_at)
        .cte("e")
    )
    stmt = (
        select(
            u,
            e.c.id.label("ev_id"),
            e.c.type.label("ev_type"),
            e.c.payload.label("ev_payload"),
            e.c.created_at.label("ev_created_at"),
        )
        .select_from(u.join(e, true()))
        .order_by(e.c.id)
    )
    if history_rows:
        rows = [
            select(literal(i).label("ord"), u.c.id.label("execution_id"),
                   (u.c.previous_state if history_from_row and i == 0
                    else bindparam(f"p_from_{i}", type_=String)).label("from_state"),
                   bindparam(f"p_to_{i}", type_=String).label("to_state"),
                   bindparam(f"p_reason_{i}", type_=Text).label("reason"))
            for i in range(history_rows)
        ]
        hsrc = (rows[0] if len(rows) == 1 else union_all(*rows)).subquery("hsrc")
        stmt = stmt.add_cte(
            insert(HISTORY)
            .from_select(
                ["execution_id", "from_state", "to_state", "reason"],
                select(hsrc.c.execution_id, hsrc.c.from_state, hsrc.c.to_state, hsrc.c.reason)
                .order_by(hsrc.c.ord),
            )
            .cte("h")
        )
    return stmt
