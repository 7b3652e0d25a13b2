"""ExecutionRepository: every read and write of executions, their history, events and agents.

Each method runs in the caller's session when one is given (so the state manager can
put several writes in ONE transaction), or in a transaction of its own otherwise. A
method that is one SQL statement runs it in autocommit mode (the statement is its own
transaction): no BEGIN and COMMIT round trips. `transition` and `record_progress` are
such statements: the guarded UPDATE, the history row and the event rows are written by
ONE statement (data-modifying CTEs), so they commit together or not at all.
Unexpected database failures become DatabaseError after a rollback, logged once here
with the execution id.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import structlog
from sqlalchemy import (
    Select,
    bindparam,
    cast,
    delete,
    func,
    literal,
    literal_column,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ConflictError, DatabaseError, DatabaseUnavailableError
from app.execution.event_emitter import EventSpec
from app.execution.statements import logged_insert, logged_update
from app.models import Agent, Execution, ExecutionEvent, ExecutionStateHistory
from app.schemas import FINISHED_STATES, HELD_BY_WORKER, ExecutionFilters, ExecutionState, Pagination

log = structlog.get_logger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _wrap_db_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn SQLAlchemy failures into DatabaseError, logged with the execution id."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (DatabaseError, ConflictError):
            raise
        except (OperationalError, InterfaceError) as exc:
            log.error("database unavailable", operation=fn.__name__, execution_id=_id_of(args))
            raise DatabaseUnavailableError(f"database unavailable during {fn.__name__}") from exc
        except SQLAlchemyError as exc:
            log.error(
                "database operation failed",
                operation=fn.__name__,
                execution_id=_id_of(args),
                error=str(exc.orig if hasattr(exc, "orig") else exc).splitlines()[0],
            )
            raise DatabaseError(f"{fn.__name__} failed: {type(exc).__name__}") from exc

    return wrapper


def _id_of(args: tuple[Any, ...]) -> str | None:
    return str(args[1]) if len(args) > 1 and isinstance(args[1], uuid.UUID) else None


@_wrap_db_errors
def commit(session: Session) -> None:
    """Commit the caller's transaction, failures wrapped like every repository call."""
    session.commit()


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


NOW = func.now()
EXACT_COUNT_UP_TO = 10_000
COUNT_TIMEOUT_MS = 20
_MERGE_CONTEXT = Execution.context.op("||")(bindparam("context_update", type_=JSONB))


def _unique_violation(exc: IntegrityError) -> bool:
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "23505"


class ExecutionRepository:
    """Handles all database operations for executions (and agents)."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self.session_factory = session_factory

    @contextmanager
    def transaction(self, session: Session | None = None) -> Iterator[Session]:
        """The caller's session as is, or a new one committed at the end (rolled back on error)."""
        if session is not None:
            yield session
            return
        with self.session_factory() as own:
            try:
                yield own
                own.commit()
            except BaseException:
                own.rollback()
                raise

    @contextmanager
    def autocommit(self, session: Session | None = None) -> Iterator[Session]:
        """The caller's session as is, or a new one in which every statement commits by itself.

        For reads and one-statement writes: no BEGIN, COMMIT or ROLLBACK round trips.
        """
        if session is not None:
            yield session
            return
        with self.session_factory() as own:
            own.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield own

    # ----------------------------------------------------------------- executions

    @_wrap_db_errors
    def create(self, execution: Execution, *, session: Session | None = None) -> Execution:
        """Insert a new execution row."""
        with self.transaction(session) as s:
            s.add(execution)
            s.flush()
            return execution

    @_wrap_db_errors
    def create_idempotent(self, values: dict[str, Any], *, session: Session) -> Execution | None:
        """Insert unless (tenant, idempotency_key) exists; None when it did (a unique index decides)."""
        stmt = (
            pg_insert(Execution)
            .values(**values)
            .on_conflict_do_nothing(
                index_elements=["tenant", "idempotency_key"],
                index_where=Execution.idempotency_key.isnot(None),
            )
            .returning(Execution)
        )
        return session.scalars(stmt).one_or_none()

    @_wrap_db_errors
    def get_by_idempotency_key(self, tenant: str, key: str) -> Execution | None:
        """The execution created with this idempotency key, if any."""
        with self.autocommit() as s:
            return s.scalars(
                select(Execution).where(
                    Execution.tenant == tenant, Execution.idempotency_key == key
                )
            ).one_or_none()

    @_wrap_db_errors
    def get_by_id(
        self, execution_id: uuid.UUID, *, tenant: str | None = None, session: Session | None = None
    ) -> Execution | None:
        """The execution, or None when it does not exist (for this tenant)."""
        with self.autocommit(session) as s:
            stmt = select(Execution).where(Execution.id == execution_id)
            if tenant is not None:
                stmt = stmt.where(Execution.tenant == tenant)
            return s.scalars(stmt).one_or_none()

    @_wrap_db_errors
    def list_executions(
        self,
        filters: ExecutionFilters | dict[str, Any],
        pagination: Pagination | dict[str, int],
        *,
        tenant: str | None = None,
    ) -> tuple[list[Execution], int]:
        """A page of executions, newest first, and the total matching the filters."""
        f = filters if isinstance(filters, ExecutionFilters) else ExecutionFilters(**filters)
        p = pagination if isinstance(pagination, Pagination) else Pagination(**pagination)
        where = self._filter_clauses(f, tenant)
        with self.autocommit() as s:
            total = s.scalar(select(func.count()).select_from(Execution).where(*where)) or 0
            return self._page(s, where, p), int(total)

    @_wrap_db_errors
    def list_executions_page(
        self,
        filters: ExecutionFilters | dict[str, Any],
        pagination: Pagination | dict[str, int],
        *,
        tenant: str | None = None,
        exact_up_to: int = EXACT_COUNT_UP_TO,
        count_timeout_ms: int = COUNT_TIMEOUT_MS,
    ) -> tuple[list[Execution], int, bool]:
        """A page, newest first, the total and whether the total is exact.

        Counting every match of a broad filter over millions of rows takes far longer
        than reading the page, so the total is exact only when it is cheap: at most
        `exact_up_to` matches, counted within `count_timeout_ms`. Otherwise it is
        PostgreSQL's planner estimate (at least `exact_up_to` + 1 when the cap was
        reached) and `exact` is False.
        """
        f = filters if isinstance(filters, ExecutionFilters) else ExecutionFilters(**filters)
        p = pagination if isinstance(pagination, Pagination) else Pagination(**pagination)
        where = self._filter_clauses(f, tenant)
        matching: Select[Any] = select(literal_column("1")).select_from(Execution).where(*where)
        capped = select(func.count()).select_from(matching.limit(exact_up_to + 1).subquery())
        with self.session_factory() as s:
            s.execute(text(f"SET LOCAL statement_timeout = {int(count_timeout_ms)}"))
            try:
                counted: int | None = int(s.scalar(capped) or 0)
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != "57014":  # query_canceled: took too long
                    raise
                counted = None
            s.rollback()  # ends the timeout's transaction (and an aborted one)
        with self.autocommit() as s:
            if counted is not None and counted <= exact_up_to:
                return self._page(s, where, p), counted, True
            estimate = self._estimate(s, matching)
            if counted is not None:
                estimate = max(estimate, exact_up_to + 1)
            return self._page(s, where, p), estimate, False

    @staticmethod
    def _page(s: Session, where: list[Any], p: Pagination) -> list[Execution]:
        stmt: Select[Any] = (
            select(Execution)
            .where(*where)
            .order_by(Execution.created_at.desc(), Execution.id.desc())
            .offset((p.page - 1) * p.page_size)
            .limit(p.page_size)
        )
        return list(s.scalars(stmt))

    @staticmethod
    def _estimate(s: Session, matching: Select[Any]) -> int:
        """The planner's row estimate for `matching` (EXPLAIN, nothing is read)."""
        compiled = matching.compile(dialect=s.get_bind().dialect, compile_kwargs={"render_postcompile": True})
        plan = s.connection().exec_driver_sql(
            "EXPLAIN (FORMAT JSON) " + compiled.string, compiled.params
        ).scalar()
        data: Any = json.loads(plan) if isinstance(plan, str) else plan
        return int(data[0]["Plan"]["Plan Rows"])

    @staticmethod
    def _filter_clauses(f: ExecutionFilters, tenant: str | None) -> list[Any]:
        where: list[Any] = []
        if tenant is not None:
            where.append(Execution.tenant == tenant)
        if f.state:
            states = [ExecutionState(s).value for s in f.state]
            where.append(
                Execution.state == states[0] if len(states) == 1 else Execution.state.in_(states)
            )
        if f.agent_id is not None:
            where.append(Execution.agent_id == f.agent_id)
        if f.task_id is not None:
            where.append(Execution.task_id == f.task_id)
        if f.created_after is not None:
            where.append(Execution.created_at > f.created_after)
        if f.created_before is not None:
            where.append(Execution.created_at < f.created_before)
        return where

    @_wrap_db_errors
    def update_state(
        self,
        execution_id: uuid.UUID,
        state: ExecutionState,
        timestamps: dict[str, Any] | None = None,
        *,
        expected_state: ExecutionState | None = None,
        expected_attempt: int | None = None,
        values: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> Execution | None:
        """Guarded UPDATE ... RETURNING: None when not found or when a guard did not match."""
        stmt = update(Execution).where(Execution.id == execution_id)
        if expected_state is not None:
            stmt = stmt.where(Execution.state == ExecutionState(expected_state).value)
        if expected_attempt is not None:
            stmt = stmt.where(Execution.attempt == expected_attempt)
        new_values: dict[str, Any] = {
            "state": ExecutionState(state).value,
            "updated_at": func.now(),
        }
        new_values.update(timestamps or {})
        new_values.update(values or {})
        stmt = stmt.values(**new_values).returning(Execution)
        with self.autocommit(session) as s:
            return s.scalars(stmt, execution_options={"populate_existing": True}).one_or_none()

    @_wrap_db_errors
    def update_progress(
        self,
        execution_id: uuid.UUID,
        percentage: float,
        message: str | None,
        context_update: dict[str, Any] | None = None,
        *,
        expected_attempt: int | None = None,
        session: Session | None = None,
    ) -> Execution | None:
        """Set progress while RUNNING and never lower; merge `context_update` (top-level keys).

        None when the execution is missing, not RUNNING, of another attempt, or
        already further along.
        """
        stmt = update(Execution).where(
            Execution.id == execution_id,
            Execution.state == ExecutionState.RUNNING.value,
            Execution.progress_percentage <= percentage,
        )
        if expected_attempt is not None:
            stmt = stmt.where(Execution.attempt == expected_attempt)
        values: dict[str, Any] = {
            "progress_percentage": percentage,
            "progress_message": message,
            "updated_at": func.now(),
        }
        if context_update:
            values["context"] = Execution.context.op("||")(
                cast(literal(context_update, JSONB), JSONB)
            )
        stmt = stmt.values(**values).returning(Execution)
        with self.autocommit(session) as s:
            return s.scalars(stmt, execution_options={"populate_existing": True}).one_or_none()

    @_wrap_db_errors
    def transition(
        self,
        execution_id: uuid.UUID,
        target: ExecutionState,
        *,
        expected_state: ExecutionState | None,
        sources: frozenset[ExecutionState] | None = None,
        expected_attempt: int | None = None,
        tenant: str | None = None,
        values: dict[str, Any] | None = None,
        reason: str | None = None,
        events: list[EventSpec],
        params: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> tuple[Execution | None, list[ExecutionEvent], ExecutionState | None]:
        """ONE statement: the guarded UPDATE, its history row and its event rows.

        Guarded by `expected_state`, or (when it is None) by the row being in one of
        `sources`: then the row is locked and the state it was in is read by the same
        statement. Returns (row, events, previous state), or (None, [], None) when the
        execution is missing (for this tenant) or a guard did not match; then nothing
        was written. `params` are named parameters of SQL expressions in `values`.
        """
        guards: dict[str, Any] = {}
        if expected_state is not None:
            guards["state"] = ExecutionState(expected_state).value
        elif not sources:
            raise ValueError("a transition needs an expected state or the states it may come from")
        if expected_attempt is not None:
            guards["attempt"] = expected_attempt
        if tenant is not None:
            guards["tenant"] = tenant
        new_values = {"state": ExecutionState(target).value, "updated_at": NOW} | (values or {})
        from_state = None if expected_state is None else ExecutionState(expected_state).value
        to_state = ExecutionState(target).value
        history: list[tuple[str | None, str, str | None]] = [(from_state, to_state, reason)]
        allowed = None if expected_state is not None else sorted(x.value for x in sources or ())
        with self.autocommit(session) as s:
            row, logged, previous = logged_update(
                s, execution_id, guards=guards, values=new_values, events=events, history=history,
                params=params, sources=allowed,
            )
        if row is None:
            return None, [], None
        return row, logged, ExecutionState(previous or from_state)

    @_wrap_db_errors
    def create_logged(
        self,
        values: dict[str, Any],
        *,
        history: list[tuple[str | None, str, str | None]],
        events: list[EventSpec],
        agent_tenant: str | None = None,
        session: Session | None = None,
    ) -> tuple[Execution | None, list[ExecutionEvent]]:
        """ONE statement: insert the execution (if its agent exists in `agent_tenant`), its
        history rows and its event rows. (None, []) when the agent does not exist."""
        with self.autocommit(session) as s:
            return logged_insert(s, values, agent_id=values["agent_id"], agent_tenant=agent_tenant,
                                 events=events, history=history)

    @_wrap_db_errors
    def record_progress(
        self,
        execution_id: uuid.UUID,
        percentage: float,
        message: str | None,
        context_update: dict[str, Any] | None = None,
        *,
        event: EventSpec,
        expected_attempt: int | None = None,
        session: Session | None = None,
    ) -> tuple[Execution | None, list[ExecutionEvent]]:
        """ONE statement: update_progress's guarded UPDATE (RUNNING, never lower) and its event row."""
        guards: dict[str, Any] = {"state": ExecutionState.RUNNING.value, "progress_percentage": percentage}
        if expected_attempt is not None:
            guards["attempt"] = expected_attempt
        values: dict[str, Any] = {
            "progress_percentage": percentage,
            "progress_message": message,
            "updated_at": NOW,
        }
        params = None
        if context_update:
            values["context"] = _MERGE_CONTEXT
            params = {"context_update": context_update}
        with self.autocommit(session) as s:
            row, logged, _ = logged_update(s, execution_id, guards=guards, values=values, events=[event],
                                           params=params)
            return row, logged

    @_wrap_db_errors
    def update_result(
        self,
        execution_id: uuid.UUID,
        result: dict[str, Any] | None,
        error_message: str | None = None,
        *,
        session: Session | None = None,
    ) -> Execution | None:
        """Store the result and error message of an execution."""
        stmt = (
            update(Execution)
            .where(Execution.id == execution_id)
            .values(result=result, error_message=error_message, updated_at=func.now())
            .returning(Execution)
        )
        with self.autocommit(session) as s:
            return s.scalars(stmt, execution_options={"populate_existing": True}).one_or_none()

    @_wrap_db_errors
    def save_checkpoint(self, execution_id: uuid.UUID, attempt: int, context_update: dict[str, Any]) -> bool:
        """Merge `context_update` into context while this attempt holds the execution."""
        stmt = (
            update(Execution)
            .where(
                Execution.id == execution_id,
                Execution.attempt == attempt,
                Execution.state.in_([s.value for s in HELD_BY_WORKER]),
            )
            .values(
                context=Execution.context.op("||")(cast(literal(context_update, JSONB), JSONB)),
                updated_at=func.now(),
            )
        )
        with self.autocommit() as s:
            return _rowcount(s.execute(stmt)) > 0

    @_wrap_db_errors
    def heartbeat(
        self, held: dict[uuid.UUID, int], *, session: Session | None = None
    ) -> dict[uuid.UUID, str]:
        """Refresh heartbeat_at of the executions this worker still holds; their current states.

        An execution of another attempt or no longer RUNNING/PAUSING/CANCELLING is left
        alone and missing from the answer (its run has lost the lease).
        """
        if not held:
            return {}
        pairs = list(held.items())
        stmt = (
            update(Execution)
            .where(
                tuple_(Execution.id, Execution.attempt).in_(pairs),
                Execution.state.in_([s.value for s in HELD_BY_WORKER]),
            )
            .values(heartbeat_at=func.now())
            .returning(Execution.id, Execution.state)
        )
        with self.autocommit(session) as s:
            return {row.id: row.state for row in s.execute(stmt)}

    @_wrap_db_errors
    def delete_execution(
        self,
        execution_id: uuid.UUID,
        *,
        tenant: str | None = None,
        only_states: frozenset[ExecutionState] | None = None,
    ) -> bool:
        """Delete the execution (and its history and events); False when not found or guarded."""
        stmt = delete(Execution).where(Execution.id == execution_id)
        if tenant is not None:
            stmt = stmt.where(Execution.tenant == tenant)
        if only_states is not None:
            stmt = stmt.where(Execution.state.in_([s.value for s in only_states]))
        with self.autocommit() as s:
            return _rowcount(s.execute(stmt)) > 0

    # ----------------------------------------------------------- history and events

    @_wrap_db_errors
    def create_state_history(
        self, history_item: ExecutionStateHistory, *, session: Session | None = None
    ) -> ExecutionStateHistory:
        """Insert one history row."""
        with self.transaction(session) as s:
            s.add(history_item)
            s.flush()
            return history_item

    @_wrap_db_errors
    def get_state_history(
        self, execution_id: uuid.UUID, limit: int = 10
    ) -> list[ExecutionStateHistory]:
        """The last `limit` transitions of an execution, oldest first."""
        with self.autocommit() as s:
            rows = list(
                s.scalars(
                    select(ExecutionStateHistory)
                    .where(ExecutionStateHistory.execution_id == execution_id)
                    .order_by(ExecutionStateHistory.id.desc())
                    .limit(limit)
                )
            )
        rows.reverse()
        return rows

    @_wrap_db_errors
    def get_events(
        self, execution_id: uuid.UUID, after_id: int = 0, limit: int = 1000
    ) -> list[ExecutionEvent]:
        """Events of an execution with id greater than `after_id`, in order."""
        with self.autocommit() as s:
            return list(
                s.scalars(
                    select(ExecutionEvent)
                    .where(
                        ExecutionEvent.execution_id == execution_id, ExecutionEvent.id > after_id
                    )
                    .order_by(ExecutionEvent.id)
                    .limit(limit)
                )
            )

    # -------------------------------------------------------------------- agents

    @_wrap_db_errors
    def create_agent(self, agent: Agent) -> Agent:
        """Insert an agent; ConflictError when its name is taken in its tenant."""
        try:
            with self.transaction() as s:
                s.add(agent)
                s.flush()
                return agent
        except IntegrityError as exc:
            if _unique_violation(exc):
                raise ConflictError(f"an agent named {agent.name!r} already exists") from exc
            raise

    @_wrap_db_errors
    def get_agent(self, agent_id: uuid.UUID, *, tenant: str | None = None) -> Agent | None:
        """The agent, or None."""
        with self.autocommit() as s:
            stmt = select(Agent).where(Agent.id == agent_id)
            if tenant is not None:
                stmt = stmt.where(Agent.tenant == tenant)
            return s.scalars(stmt).one_or_none()

    @_wrap_db_errors
    def get_agent_by_name(self, name: str, *, tenant: str) -> Agent | None:
        """The agent of that name in the tenant, or None."""
        with self.autocommit() as s:
            return s.scalars(
                select(Agent).where(Agent.tenant == tenant, Agent.name == name)
            ).one_or_none()

    @_wrap_db_errors
    def list_agents(
        self, pagination: Pagination | dict[str, int], *, tenant: str | None = None
    ) -> tuple[list[Agent], int]:
        """A page of agents by name, and their total."""
        p = pagination if isinstance(pagination, Pagination) else Pagination(**pagination)
        where = [] if tenant is None else [Agent.tenant == tenant]
        with self.autocommit() as s:
            total = s.scalar(select(func.count()).select_from(Agent).where(*where)) or 0
            items = list(
                s.scalars(
                    select(Agent)
                    .where(*where)
                    .order_by(Agent.name, Agent.id)
                    .offset((p.page - 1) * p.page_size)
                    .limit(p.page_size)
                )
            )
            return items, int(total)

    @_wrap_db_errors
    def update_agent(
        self, agent_id: uuid.UUID, changes: dict[str, Any], *, tenant: str | None = None
    ) -> Agent | None:
        """Apply `changes` to the agent; None when not found; ConflictError on a taken name."""
        stmt = update(Agent).where(Agent.id == agent_id)
        if tenant is not None:
            stmt = stmt.where(Agent.tenant == tenant)
        stmt = stmt.values(**changes, updated_at=func.now()).returning(Agent)
        try:
            with self.autocommit() as s:
                return s.scalars(stmt).one_or_none()
        except IntegrityError as exc:
            if _unique_violation(exc):
                raise ConflictError(
                    f"an agent named {changes.get('name')!r} already exists"
                ) from exc
            raise

    @_wrap_db_errors
    def delete_agent(self, agent_id: uuid.UUID, *, tenant: str | None = None) -> bool:
        """Delete an agent and its finished executions; False when not found."""
        with self.transaction() as s:
            stmt = delete(Agent).where(Agent.id == agent_id)
            if tenant is not None:
                stmt = stmt.where(Agent.tenant == tenant)
            s.execute(delete(Execution).where(Execution.agent_id == agent_id))
            return _rowcount(s.execute(stmt)) > 0

    @_wrap_db_errors
    def agent_has_active_executions(self, agent_id: uuid.UUID) -> bool:
        """True while any execution of the agent is not finished."""
        with self.autocommit() as s:
            return (
                s.scalar(
                    select(Execution.id)
                    .where(
                        Execution.agent_id == agent_id,
                        Execution.state.notin_([st.value for st in FINISHED_STATES]),
                    )
                    .limit(1)
                )
                is not None
            )
