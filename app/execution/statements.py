"""Logged updates: a guarded UPDATE of an execution, its history row and its event rows in ONE statement.

    WITH u AS (UPDATE executions SET .. WHERE <guards> RETURNING *),
         h AS (INSERT INTO execution_state_history .. SELECT .. FROM u),
         e AS (INSERT INTO execution_events .. SELECT .. FROM u ORDER BY .. RETURNING ..)
    SELECT u.*, e.* FROM u CROSS JOIN e ORDER BY e.id

Data-modifying CTEs run to completion exactly once, so the three writes commit together
or not at all; when a guard does not match, `u` is empty and nothing is written. Event
payloads are the emitter's EventSpec: the known part as a JSONB parameter, merged with
fields of the updated row (`jsonb_build_object`).

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
from app.models import Execution, ExecutionEvent, ExecutionStateHistory

EXECUTIONS: Table = Execution.__table__  # type: ignore[assignment]
HISTORY: Table = ExecutionStateHistory.__table__  # type: ignore[assignment]
EVENTS: Table = ExecutionEvent.__table__  # type: ignore[assignment]
# ORM attribute -> column name of executions (they differ for metadata_), and back.
COLUMN_OF = {attr.key: attr.columns[0].key for attr in sa_inspect(Execution).column_attrs}
ATTRIBUTE_OF = {column: attr for attr, column in COLUMN_OF.items()}
_UUID_COLUMNS = frozenset({"id", "agent_id", "task_id"})
_MAX_SHAPES = 256

# A named parameter that SQL expressions in `values` may use (the QUEUED retry delay).
DELAY_SECONDS = bindparam("delay_seconds", type_=Float)


_shapes: dict[Any, Select[Any]] = {}
_lock = threading.Lock()


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
    history: tuple[str, str, str | None] | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[Execution | None, list[ExecutionEvent]]:
    """Run the one-statement write; (None, []) when no row matched the guards.

    `guards` are column -> required value (`progress_percentage` means "at most");
    `values` are attribute -> new value, a plain value or a SQL expression whose named
    parameters are given in `params`.
    """
    plain = {k: v for k, v in values.items() if not isinstance(v, ClauseElement)}
    exprs = {k: v for k, v in values.items() if isinstance(v, ClauseElement)}
    key = (
        tuple(sorted(guards)),
        tuple(sorted(plain)),
        tuple(sorted((k, _expression_key(v)) for k, v in exprs.items())),
        tuple(spec.type for spec in events),
        history is not None,
    )
    stmt = _shapes.get(key)
    if stmt is None:
        stmt = _build(guards, plain, exprs, events, history is not None)
        with _lock:
            if len(_shapes) >= _MAX_SHAPES:
                _shapes.clear()
            _shapes[key] = stmt
    bound: dict[str, Any] = {"p_id": execution_id}
    bound.update({f"g_{k}": v for k, v in guards.items()})
    bound.update({f"v_{COLUMN_OF.get(k, k)}": v for k, v in plain.items()})
    bound.update({f"p_static_{i}": spec.static for i, spec in enumerate(events)})
    if history is not None:
        bound.update(p_from=history[0], p_to=history[1], p_reason=history[2])
    bound.update(params or {})
    rows = session.connection().execute(stmt, bound).mappings().all()
    if not rows:
        return None, []
    execution = execution_from_row(rows[0])
    logged = [
        ExecutionEvent(id=r["ev_id"], execution_id=execution.id, type=r["ev_type"], payload=r["ev_payload"],
                       created_at=r["ev_created_at"])
        for r in rows
    ]
    return execution, logged


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


def _build(
    guards: dict[str, Any],
    plain: dict[str, Any],
    exprs: dict[str, Any],
    events: list[EventSpec],
    with_history: bool,
) -> Select[Any]:
    table = EXECUTIONS
    where: list[Any] = [table.c.id == bindparam("p_id", type_=table.c.id.type)]
    for column in guards:
        col, param = table.c[column], bindparam(f"g_{column}", type_=table.c[column].type)
        where.append(col <= param if column == "progress_percentage" else col == param)
    new_values: dict[str, Any] = {
        COLUMN_OF.get(k, k): bindparam(f"v_{COLUMN_OF.get(k, k)}", type_=table.c[COLUMN_OF.get(k, k)].type)
        for k in plain
    }
    new_values.update({COLUMN_OF.get(k, k): v for k, v in exprs.items()})
    u = update(table).where(*where).values(new_values).returning(*table.c).cte("u")
    sources = []
    for order, spec in enumerate(events):
        fields: list[Any] = []
        for key, column in spec.from_row.items():
            fields.append(literal_column(f"'{key}'"))
            fields.append(cast(u.c[column], Text) if column in _UUID_COLUMNS else u.c[column])
        payload = bindparam(f"p_static_{order}", type_=JSONB).op("||", return_type=JSONB)(
            func.jsonb_build_object(*fields, type_=JSONB)
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
    if with_history:
        stmt = stmt.add_cte(
            insert(HISTORY)
            .from_select(
                ["execution_id", "from_state", "to_state", "reason"],
                select(u.c.id, bindparam("p_from", type_=String), bindparam("p_to", type_=String),
                       bindparam("p_reason", type_=Text)),
            )
            .cte("h")
        )
    return stmt
