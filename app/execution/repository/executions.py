"""Executions, their state history and their events: every read and every write.

Writes go through the transition writer (one statement: the row, its history rows and
its event rows); the seed's update_* methods are thin uses of it that log nothing.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Select, func, literal_column, or_, select, text
from sqlalchemy.exc import OperationalError

from app.execution import writer
from app.execution.event_emitter import EventSpec
from app.execution.repository.base import RepositoryBase
from app.execution.unit_of_work import UnitOfWork
from app.execution.writer import Expr, Written
from app.models import Execution, ExecutionEvent, ExecutionStateHistory
from app.schemas import HELD_BY_WORKER, ExecutionFilters, ExecutionState, Pagination

EXACT_COUNT_UP_TO = 10_000
COUNT_TIMEOUT_MS = 20
_HELD = [s.value for s in HELD_BY_WORKER]


def _state(value: ExecutionState | str) -> str:
    return ExecutionState(value).value


class ExecutionRows(RepositoryBase):
    """Handles all database operations for executions."""

    # ----------------------------------------------------------------- create

    def create_execution(
        self,
        values: dict[str, Any],
        *,
        history: list[writer.History],
        events: list[EventSpec],
        agent_tenant: str | None,
        skip_if_key_exists: bool = False,
        uow: UnitOfWork | None = None,
        params: dict[str, Any] | None = None,
    ) -> Written:
        """ONE statement: the execution (if its agent exists in `agent_tenant`), its history and events.

        Nothing is written when the agent does not exist, or (`skip_if_key_exists`) when
        the tenant already used the idempotency key.
        """
        with self._work(uow, "create_execution", values.get("id")) as work:
            return writer.insert(
                work.connection,
                values,
                agent_id=values["agent_id"],
                agent_tenant=agent_tenant,
                events=events,
                history=history,
                skip_if_key_exists=skip_if_key_exists,
                params=params,
            )

    def create_execution_for_task(
        self,
        values: dict[str, Any],
        *,
        history: list[writer.History],
        events: list[EventSpec],
        agent_tenant: str | None,
        skip_if_key_exists: bool = False,
        on_conflict: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[Written, str, list[uuid.UUID]]:
        """`create_execution` for a task_id, with its collision policy, in ONE transaction.

        The policy (`on_conflict`, else the agent's, else allow) is resolved by the database;
        unless it is allow, the task's lock is taken and its active executions read first:
        with reject and an active one nothing is inserted; with enqueue or interrupt and an
        active one the row is inserted waiting ("task_busy"). Returns (what was written, the
        policy, the active executions' ids, oldest first).
        """
        guard = "SELECT policy, active FROM agentexec_task_guard(%(t)s, %(k)s, %(a)s, %(p)s)"
        params = {"t": values["tenant"], "k": values["task_id"], "a": values["agent_id"], "p": on_conflict}
        with self._work(None, "create_execution_for_task", values.get("id"), autocommit=False) as work:
            driver = work.connection.connection.driver_connection
            with driver.cursor() as cursor:  # type: ignore[union-attr]
                policy, active = cursor.execute(guard, params).fetchone()  # type: ignore[misc]
            active = list(active or [])
            if active and policy == "reject":
                return Written(None, []), policy, active
            if policy != "allow":
                values = values | {"on_conflict": policy}
            if active and policy in ("enqueue", "interrupt") and values.get("state") == "QUEUED":
                values = values | {"waiting_reason": "task_busy"}  # no task message until its turn
            written = self.create_execution(
                values,
                history=history,
                events=events,
                agent_tenant=agent_tenant,
                skip_if_key_exists=skip_if_key_exists,
                uow=work,
                params=params,
            )
            return written, policy, active

    def take_task_waiter(self, tenant: str, task_id: uuid.UUID) -> Any | None:
        """The oldest execution waiting for `task_id` ("task_busy"), no longer waiting, when none
        of the task's other executions is active any more: (id, attempt, queue, priority)."""
        lock = (
            "SELECT pg_advisory_xact_lock("
            "hashtextextended('agentexec.task:' || %(t)s || ':' || %(k)s::text, 0))"
        )
        # The oldest waiter, but not one a newer interrupting waiter is about to cancel; SKIP
        # LOCKED: a waiter being written (cancelled) right now is not waited for (that writer
        # wants this task's lock next: waiting for its row would deadlock).
        take = (
            "UPDATE executions x SET waiting_reason = NULL WHERE x.id = ("
            " SELECT w.id FROM executions w WHERE w.tenant = %(t)s AND w.task_id = %(k)s"
            " AND w.state = 'QUEUED' AND w.waiting_reason = 'task_busy'"
            " AND NOT EXISTS (SELECT 1 FROM executions n WHERE n.tenant = %(t)s AND n.task_id = %(k)s"
            "  AND n.state = 'QUEUED' AND n.waiting_reason = 'task_busy' AND n.on_conflict = 'interrupt'"
            "  AND (n.created_at, n.id) > (w.created_at, w.id))"
            " ORDER BY w.created_at, w.id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " AND NOT EXISTS (SELECT 1 FROM executions b WHERE b.tenant = %(t)s AND b.task_id = %(k)s"
            " AND b.state NOT IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')"
            " AND b.waiting_reason IS DISTINCT FROM 'task_busy')"
            " RETURNING x.id, x.attempt, x.queue, x.priority"
        )
        with self._work(None, "take_task_waiter", autocommit=False) as work:
            driver = work.connection.connection.driver_connection
            with driver.cursor(row_factory=namedtuple_row) as cursor:  # type: ignore[union-attr]
                cursor.execute(lock, {"t": tenant, "k": task_id})
                return cursor.execute(take, {"t": tenant, "k": task_id}).fetchone()

    def idle_task_waiters(self, limit: int) -> Sequence[Any]:
        """(tenant, task_id) of tasks whose executions all wait (task_busy) or ended: the reaper
        wakes the oldest of each (a crash between an end and its hand-over leaves them)."""
        sql = (
            "SELECT DISTINCT w.tenant, w.task_id FROM executions w"
            " WHERE w.state = 'QUEUED' AND w.waiting_reason = 'task_busy'"
            " AND NOT EXISTS (SELECT 1 FROM executions b WHERE b.tenant = w.tenant AND b.task_id = w.task_id"
            " AND b.state NOT IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')"
            " AND b.waiting_reason IS DISTINCT FROM 'task_busy') LIMIT %(n)s"
        )
        with self._work(None, "idle_task_waiters") as work:
            return work.connection.exec_driver_sql(sql, {"n": limit}).all()

    def create(self, execution: Execution, *, uow: UnitOfWork | None = None) -> Execution:
        """Insert an execution row as given, logging nothing (imports and tests; the service
        creates executions with `create_execution`)."""
        with self._work(uow, "create", execution.id, autocommit=False) as work:
            work.session.add(execution)
            work.session.flush()
            return execution

    # ------------------------------------------------------------------ reads

    def get_by_id(
        self, execution_id: uuid.UUID, *, tenant: str | None = None, uow: UnitOfWork | None = None
    ) -> Execution | None:
        """The execution, or None when it does not exist (for this tenant)."""
        stmt = select(Execution).where(Execution.id == execution_id)
        if tenant is not None:
            stmt = stmt.where(Execution.tenant == tenant)
        with self._work(uow, "get_by_id", execution_id) as work:
            return work.session.scalars(stmt).one_or_none()

    def get_by_idempotency_key(self, tenant: str, key: str) -> Execution | None:
        """The execution created with this idempotency key, if any."""
        stmt = select(Execution).where(Execution.tenant == tenant, Execution.idempotency_key == key)
        with self._work(None, "get_by_idempotency_key") as work:
            return work.session.scalars(stmt).one_or_none()

    def list_executions(
        self,
        filters: ExecutionFilters | dict[str, Any],
        pagination: Pagination | dict[str, int],
        *,
        tenant: str | None = None,
    ) -> tuple[list[Execution], int]:
        """A page of executions, newest first, and the total matching the filters."""
        items, total, _ = self.list_executions_page(filters, pagination, tenant=tenant)
        return items, total

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
        where = _filter_clauses(f, tenant)
        matching: Select[Any] = select(literal_column("1")).select_from(Execution).where(*where)
        capped = select(func.count()).select_from(matching.limit(exact_up_to + 1).subquery())
        counted: int | None
        with self._work(None, "count_executions", autocommit=False) as work:
            work.session.execute(
                text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(int(count_timeout_ms))}
            )
            try:
                counted = int(work.session.scalar(capped) or 0)
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != "57014":  # query_canceled: took too long
                    raise
                counted = None
            work.session.rollback()  # ends the timeout's transaction (and an aborted one)
        with self._work(None, "list_executions") as work:
            page = _page(work, where, p)
            if counted is not None and counted <= exact_up_to:
                return page, counted, True
            estimate = _estimate(work, matching)
            if counted is not None:
                estimate = max(estimate, exact_up_to + 1)
            return page, estimate, False

    def get_state_history(self, execution_id: uuid.UUID, limit: int = 10) -> list[ExecutionStateHistory]:
        """The last `limit` transitions of an execution, oldest first."""
        stmt = (
            select(ExecutionStateHistory)
            .where(ExecutionStateHistory.execution_id == execution_id)
            .order_by(ExecutionStateHistory.id.desc())
            .limit(limit)
        )
        with self._work(None, "get_state_history", execution_id) as work:
            rows = list(work.session.scalars(stmt))
        rows.reverse()
        return rows

    def get_events(
        self, execution_id: uuid.UUID, after_id: int = 0, limit: int = 1000
    ) -> list[ExecutionEvent]:
        """Events of an execution with id greater than `after_id`, in order."""
        stmt = (
            select(ExecutionEvent)
            .where(ExecutionEvent.execution_id == execution_id, ExecutionEvent.id > after_id)
            .order_by(ExecutionEvent.id)
            .limit(limit)
        )
        with self._work(None, "get_events", execution_id) as work:
            return list(work.session.scalars(stmt))

    # ----------------------------------------------------------------- writes

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
        with_agent: bool = False,
        slot: str | None = None,
        tenant_limit: int = 0,
        release_task: bool = False,
        usage: dict[str, int] | None = None,
        uow: UnitOfWork | None = None,
    ) -> Written:
        """ONE statement: the guarded UPDATE into `target`, its history row and its event rows.

        Guarded by `expected_state`, or (when it is None) by the row being in one of
        `sources`: then the row is locked and the state it was in is read by the same
        statement. `execution` is None when nothing matched (then nothing was written).
        `slot` "take" (the claim) also needs a free concurrency slot; "release" (leaving
        RUNNING/PAUSING) returns in `waiters` whether executions wait for one.
        """
        if expected_state is None and not sources:
            raise ValueError("a transition needs an expected state or the states it may come from")
        guards = _guards(expected_state, expected_attempt, tenant)
        from_state = None if expected_state is None else _state(expected_state)
        with self._work(uow, "transition", execution_id) as work:
            return writer.update(
                work.connection,
                execution_id,
                guards=guards,
                values={"state": _state(target), "updated_at": Expr.NOW} | (values or {}),
                events=events,
                history=[(from_state, _state(target), reason)],
                sources=None if expected_state is not None else sorted(s.value for s in sources or ()),
                params=params,
                with_agent=with_agent,
                slot=slot,
                tenant_limit=tenant_limit,
                release_task=release_task,
                usage=usage,
            )

    def mark_waiting(self, execution_id: uuid.UUID, attempt: int, tenant_limit: int) -> bool | None:
        """After a claim found no slot: mark the execution waiting for one, under the same
        slot locks as the claim and the release, unless a slot has freed meanwhile.

        True: marked (the run that frees a slot will find it); False: a slot is free now,
        claim again; None: it is no longer QUEUED at this attempt.
        """
        # The row first, then the slot locks: the order of the claim and of every end.
        lock = "SELECT state, attempt FROM executions WHERE id = %(i)s FOR UPDATE"
        sql = (
            "SELECT NOT agentexec_take_slot(x.tenant, x.agent_id, %(t)s::int) AS full"
            " FROM executions x WHERE x.id = %(i)s"
        )
        mark = (
            "UPDATE executions SET waiting_reason = 'concurrency_limit', updated_at = now()"
            " WHERE id = %(i)s AND state = 'QUEUED' AND attempt = %(a)s"
        )
        with self._work(None, "mark_waiting", execution_id, autocommit=False) as work:
            driver = work.connection.connection.driver_connection
            with driver.cursor() as cursor:  # type: ignore[union-attr]
                row = cursor.execute(lock, {"i": execution_id}).fetchone()
                if row is None or row[0] != "QUEUED" or row[1] != attempt:
                    return None
                full = cursor.execute(sql, {"i": execution_id, "t": tenant_limit}).fetchone()
                if full is None or not full[0]:
                    return False
                cursor.execute(mark, {"i": execution_id, "a": attempt})
        return True

    def take_waiters(self, tenant: str, agent_id: uuid.UUID, count: int) -> Sequence[Any]:
        """The best `count` executions of `tenant` waiting for a slot (those of `agent_id` first,
        then by priority and age), no longer marked waiting: (id, attempt, queue, priority)."""
        sql = (
            "UPDATE executions x SET waiting_reason = NULL WHERE x.id IN ("
            " SELECT w.id FROM executions w WHERE w.tenant = %(t)s AND w.state = 'QUEUED'"
            " AND w.waiting_reason = 'concurrency_limit'"
            " ORDER BY (w.agent_id = %(a)s) DESC, w.priority DESC, w.queued_at, w.id"
            " LIMIT %(n)s FOR UPDATE SKIP LOCKED)"
            " AND x.state = 'QUEUED' RETURNING x.id, x.attempt, x.queue, x.priority"
        )
        with self._work(None, "take_waiters") as work:
            return work.connection.exec_driver_sql(sql, {"t": tenant, "a": agent_id, "n": count}).all()

    def waiting_groups(self, tenant_limit: int) -> Sequence[Any]:
        """Per (tenant, agent) with executions waiting for a slot: how many wait, the agent's and
        the tenant's limits and slots held (for the reaper, which wakes as many as are free)."""
        sql = (
            "SELECT w.tenant, w.agent_id, count(*) AS waiting,"
            " (SELECT a.max_concurrency FROM agents a WHERE a.id = w.agent_id) AS agent_limit,"
            " (SELECT count(*) FROM executions r WHERE r.agent_id = w.agent_id"
            "   AND r.state IN ('RUNNING', 'PAUSING')) AS agent_held,"
            " coalesce((SELECT t.max_concurrency FROM tenant_limits t WHERE t.tenant = w.tenant),"
            "   %(d)s) AS tenant_limit,"
            " (SELECT count(*) FROM executions r WHERE r.tenant = w.tenant"
            "   AND r.state IN ('RUNNING', 'PAUSING')) AS tenant_held"
            " FROM executions w WHERE w.state = 'QUEUED' AND w.waiting_reason = 'concurrency_limit'"
            " GROUP BY w.tenant, w.agent_id ORDER BY w.tenant, w.agent_id"
        )
        with self._work(None, "waiting_groups") as work:
            return work.connection.exec_driver_sql(sql, {"d": tenant_limit}).all()

    def update_state(
        self,
        execution_id: uuid.UUID,
        state: ExecutionState,
        timestamps: dict[str, Any] | None = None,
        *,
        expected_state: ExecutionState | None = None,
        expected_attempt: int | None = None,
        values: dict[str, Any] | None = None,
    ) -> Execution | None:
        """The guarded UPDATE alone (no history, no events); None when not found or a guard failed."""
        with self._work(None, "update_state", execution_id) as work:
            return writer.update(
                work.connection,
                execution_id,
                guards=_guards(expected_state, expected_attempt, None),
                values={"state": _state(state), "updated_at": Expr.NOW} | (timestamps or {}) | (values or {}),
            ).execution

    def record_progress(
        self,
        execution_id: uuid.UUID,
        percentage: float,
        message: str | None,
        context_update: dict[str, Any] | None = None,
        *,
        events: list[EventSpec],
        expected_attempt: int | None = None,
        uow: UnitOfWork | None = None,
    ) -> Written:
        """ONE statement: progress of a RUNNING execution (never lower), merged context, its events."""
        guards: dict[str, Any] = {"state": ExecutionState.RUNNING.value, "progress_percentage": percentage}
        if expected_attempt is not None:
            guards["attempt"] = expected_attempt
        values: dict[str, Any] = {
            "progress_percentage": percentage,
            "progress_message": message,
            "updated_at": Expr.NOW,
        }
        params = None
        if context_update:
            values["context"] = Expr.MERGE_CONTEXT
            params = {"context_update": context_update}
        with self._work(uow, "record_progress", execution_id) as work:
            return writer.update(
                work.connection, execution_id, guards=guards, values=values, events=events, params=params
            )

    def update_progress(
        self,
        execution_id: uuid.UUID,
        percentage: float,
        message: str | None,
        context_update: dict[str, Any] | None = None,
        *,
        expected_attempt: int | None = None,
    ) -> Execution | None:
        """record_progress without an event; None when missing, not RUNNING, another attempt or further."""
        return self.record_progress(
            execution_id, percentage, message, context_update, events=[], expected_attempt=expected_attempt
        ).execution

    def update_result(
        self, execution_id: uuid.UUID, result: dict[str, Any] | None, error_message: str | None = None
    ) -> Execution | None:
        """Store the result and error message of an execution."""
        with self._work(None, "update_result", execution_id) as work:
            return writer.update(
                work.connection,
                execution_id,
                guards={},
                values={"result": result, "error_message": error_message, "updated_at": Expr.NOW},
            ).execution

    def save_checkpoint(
        self,
        execution_id: uuid.UUID,
        attempt: int,
        context_update: dict[str, Any],
        usage: dict[str, int] | None = None,
    ) -> bool:
        """Merge `context_update` into context while this attempt holds the execution; add the
        step's token `usage` to the execution and its agent's day in the same statement."""
        with self._work(None, "save_checkpoint", execution_id) as work:
            written = writer.update(
                work.connection,
                execution_id,
                guards={"attempt": attempt},
                values={"context": Expr.MERGE_CONTEXT, "updated_at": Expr.NOW},
                sources=_HELD,
                params={"context_update": context_update},
                usage=usage,
            )
        return written.execution is not None

    def create_state_history(self, history_item: ExecutionStateHistory) -> ExecutionStateHistory:
        """Insert one history row as given (the transition writer logs history by itself)."""
        with self._work(None, "create_state_history", history_item.execution_id, autocommit=False) as work:
            work.session.add(history_item)
            work.session.flush()
            return history_item

    def heartbeat(self, held: dict[uuid.UUID, int]) -> dict[uuid.UUID, str]:
        """Refresh heartbeat_at of the executions this worker still holds; their current states.

        An execution of another attempt or no longer RUNNING/PAUSING/CANCELLING is left
        alone and missing from the answer (its run has lost the lease).
        """
        if not held:
            return {}
        sql = (
            "UPDATE executions SET heartbeat_at = now() "
            "WHERE (id, attempt) IN (SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::int[])) "
            "AND state = ANY(%(held)s::text[]) RETURNING id, state"
        )
        params = {"ids": list(held), "attempts": list(held.values()), "held": _HELD}
        with self._work(None, "heartbeat") as work:
            return {row[0]: row[1] for row in work.connection.exec_driver_sql(sql, params)}

    def states_of(self, ids: list[uuid.UUID], *, tenant: str | None = None) -> dict[uuid.UUID, str]:
        """The state of each of these executions that exists (in `tenant`)."""
        stmt = select(Execution.id, Execution.state).where(Execution.id.in_(ids))
        if tenant is not None:
            stmt = stmt.where(Execution.tenant == tenant)
        with self._work(None, "states_of") as work:
            return {row.id: row.state for row in work.session.execute(stmt)}

    def matching(
        self, f: ExecutionFilters, limit: int, *, tenant: str | None = None
    ) -> list[tuple[uuid.UUID, str]]:
        """(id, state) of the newest `limit` executions the filters match."""
        stmt = (
            select(Execution.id, Execution.state)
            .where(*_filter_clauses(f, tenant))
            .order_by(Execution.created_at.desc(), Execution.id.desc())
            .limit(limit)
        )
        with self._work(None, "matching") as work:
            return [(row.id, row.state) for row in work.session.execute(stmt)]

    def delete_execution(
        self,
        execution_id: uuid.UUID,
        *,
        tenant: str | None = None,
        only_states: frozenset[ExecutionState] | None = None,
    ) -> bool:
        """Delete the execution (and its history and events); False when not found or guarded."""
        sql = "DELETE FROM executions WHERE id = %(id)s"
        params: dict[str, Any] = {"id": execution_id}
        if tenant is not None:
            sql += " AND tenant = %(tenant)s"
            params["tenant"] = tenant
        if only_states is not None:
            sql += " AND state = ANY(%(states)s::text[])"
            params["states"] = [s.value for s in only_states]
        with self._work(None, "delete_execution", execution_id) as work:
            return work.connection.exec_driver_sql(sql, params).rowcount > 0


def _guards(expected_state: ExecutionState | None, attempt: int | None, tenant: str | None) -> dict[str, Any]:
    guards: dict[str, Any] = {}
    if expected_state is not None:
        guards["state"] = _state(expected_state)
    if attempt is not None:
        guards["attempt"] = attempt
    if tenant is not None:
        guards["tenant"] = tenant
    return guards


def _filter_clauses(f: ExecutionFilters, tenant: str | None) -> list[Any]:
    where: list[Any] = []
    if tenant is not None:
        where.append(Execution.tenant == tenant)
    if f.state:
        states = [ExecutionState(s).value for s in f.state]
        where.append(Execution.state == states[0] if len(states) == 1 else Execution.state.in_(states))
    if f.agent_id is not None:
        where.append(Execution.agent_id == f.agent_id)
    if f.task_id is not None:
        where.append(Execution.task_id == f.task_id)
    if f.error_code:
        where.append(Execution.error_code.in_([c.value for c in f.error_code]))
    if f.metadata:
        where.extend(_metadata_clause(key, value) for key, value in f.metadata.items())
    if f.created_after is not None:
        where.append(Execution.created_at > f.created_after)
    if f.created_before is not None:
        where.append(Execution.created_at < f.created_before)
    return where


def _metadata_clause(key: str, value: Any) -> Any:
    """metadata @> {key: value}; a string that spells a JSON number or boolean (a query
    parameter's `5`, `true`) also matches that number or boolean. Served by the GIN index."""
    alternatives = [value]
    if isinstance(value, str) and value == value.strip():
        try:
            spelled = json.loads(value)
        except ValueError:
            spelled = None
        if isinstance(spelled, bool | int) or (isinstance(spelled, float) and math.isfinite(spelled)):
            alternatives.append(spelled)
    clauses = [Execution.metadata_.contains({key: v}) for v in alternatives]
    return clauses[0] if len(clauses) == 1 else or_(*clauses)


def _page(work: UnitOfWork, where: list[Any], p: Pagination) -> list[Execution]:
    stmt: Select[Any] = (
        select(Execution)
        .where(*where)
        .order_by(Execution.created_at.desc(), Execution.id.desc())
        .offset((p.page - 1) * p.page_size)
        .limit(p.page_size)
    )
    return list(work.session.scalars(stmt))


def _estimate(work: UnitOfWork, matching: Select[Any]) -> int:
    """The planner's row estimate for `matching` (EXPLAIN, nothing is read)."""
    compiled = matching.compile(
        dialect=work.session.get_bind().dialect, compile_kwargs={"render_postcompile": True}
    )
    plan = work.connection.exec_driver_sql(
        "EXPLAIN (FORMAT JSON) " + compiled.string, compiled.params
    ).scalar()
    data: Any = json.loads(plan) if isinstance(plan, str) else plan
    return int(data[0]["Plan"]["Plan Rows"])
