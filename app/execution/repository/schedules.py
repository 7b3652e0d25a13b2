"""Schedules and delayed starts: the rows the schedule tick reads and the API manages."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from app.errors import AgentNotFoundError, ConflictError, ScheduleNotFoundError
from app.execution.repository.base import RepositoryBase
from app.execution.unit_of_work import UnitOfWork
from app.models import Agent, Schedule
from app.schemas import Pagination

# One tenant's creates are counted and inserted under this lock, so the cap holds under races.
_TENANT_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('agentexec.schedules:' || %(t)s, 0))"


class ScheduleRows(RepositoryBase):
    """Handles the database operations of schedules and of executions waiting to start."""

    def due_scheduled(self, now: datetime | None, limit: int, *, uow: UnitOfWork) -> list[uuid.UUID]:
        """Ids of PENDING executions whose `scheduled_at` has come, locked (SKIP LOCKED: another
        tick pass takes the others), oldest first. `now` None: the database's clock."""
        sql = (
            "SELECT id FROM executions WHERE state = 'PENDING' AND scheduled_at IS NOT NULL"
            " AND scheduled_at <= coalesce(%(now)s::timestamptz, now())"
            " ORDER BY scheduled_at LIMIT %(n)s FOR UPDATE SKIP LOCKED"
        )
        return [r[0] for r in uow.connection.exec_driver_sql(sql, {"now": now, "n": limit})]

    def insert_schedule(self, schedule: Schedule, *, cap: int) -> Schedule:
        """Insert a schedule of an agent of its tenant, unless the tenant has `cap` already.

        Raises AgentNotFoundError (no such agent in the tenant) and ConflictError (the cap)."""
        with self._work(None, "insert_schedule", autocommit=False) as work:
            work.connection.exec_driver_sql(_TENANT_LOCK, {"t": schedule.tenant})
            self._check_agent(work, schedule.agent_id, schedule.tenant)
            count = work.session.scalar(
                select(func.count()).select_from(Schedule).where(Schedule.tenant == schedule.tenant)
            )
            if (count or 0) >= cap:
                raise ConflictError(
                    f"this tenant has {count} schedules, the limit (SCHEDULES_MAX_PER_TENANT); "
                    "delete one first"
                )
            work.session.add(schedule)
            work.session.flush()
            return schedule

    def get_schedule(self, schedule_id: uuid.UUID, *, tenant: str | None = None) -> Schedule | None:
        """The schedule, or None (also when it belongs to another tenant)."""
        stmt = select(Schedule).where(Schedule.id == schedule_id)
        if tenant is not None:
            stmt = stmt.where(Schedule.tenant == tenant)
        with self._work(None, "get_schedule") as work:
            return work.session.scalars(stmt).one_or_none()

    def list_schedules(self, pagination: Pagination, *, tenant: str) -> tuple[list[Schedule], int]:
        """A page of the tenant's schedules, oldest first, and their total."""
        where = Schedule.tenant == tenant
        stmt = (
            select(Schedule)
            .where(where)
            .order_by(Schedule.created_at, Schedule.id)
            .offset((pagination.page - 1) * pagination.page_size)
            .limit(pagination.page_size)
        )
        with self._work(None, "list_schedules") as work:
            total = work.session.scalar(select(func.count()).select_from(Schedule).where(where)) or 0
            return list(work.session.scalars(stmt)), int(total)

    def update_schedule(
        self, schedule_id: uuid.UUID, change: Callable[[Schedule], None], *, tenant: str
    ) -> Schedule:
        """Lock the schedule, let `change` set its fields (and its next tick), write it.

        Raises ScheduleNotFoundError and, for an agent_id not of the tenant, AgentNotFoundError."""
        stmt = select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant == tenant).with_for_update()
        with self._work(None, "update_schedule", autocommit=False) as work:
            row = work.session.scalars(stmt).one_or_none()
            if row is None:
                raise ScheduleNotFoundError(schedule_id)
            agent_before = row.agent_id
            change(row)
            if row.agent_id != agent_before:
                self._check_agent(work, row.agent_id, tenant)
            row.updated_at = func.now()
            work.session.flush()
            work.session.refresh(row)
            return row

    def delete_schedule(self, schedule_id: uuid.UUID, *, tenant: str) -> bool:
        """Delete the schedule (its executions stay); False when there is none."""
        stmt = delete(Schedule).where(Schedule.id == schedule_id, Schedule.tenant == tenant)
        with self._work(None, "delete_schedule") as work:
            return bool(work.session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def claim_due_schedules(self, now: datetime | None, limit: int, *, uow: UnitOfWork) -> list[Schedule]:
        """Enabled schedules whose next tick has come, locked until `uow` ends (SKIP LOCKED:
        another tick pass takes the others, or none)."""
        moment: Any = func.now() if now is None else now
        stmt = (
            select(Schedule)
            .where(Schedule.enabled.is_(True), Schedule.next_run_at <= moment)
            .order_by(Schedule.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return list(uow.session.scalars(stmt))

    @staticmethod
    def _check_agent(work: UnitOfWork, agent_id: uuid.UUID, tenant: str) -> None:
        # FOR KEY SHARE: a delete of the agent waits for this write (and then cascades to it).
        found = work.session.scalar(
            select(Agent.id)
            .where(Agent.id == agent_id, Agent.tenant == tenant)
            .with_for_update(key_share=True)
        )
        if found is None:
            raise AgentNotFoundError(agent_id)
