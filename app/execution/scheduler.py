"""The schedule tick: delayed starts become QUEUED when due, and cron schedules create their runs.

A beat task runs `tick` every SCHEDULE_TICK_INTERVAL (1 s), never a Celery ETA (a message
held by a worker past Redis's visibility timeout is delivered again). PostgreSQL is the
truth: a pass claims due rows with FOR UPDATE SKIP LOCKED, so two passes (two beat
processes by mistake, or a slow pass overlapping the next) share the work, never repeat it.

Exactly one execution per tick: a tick's execution is created with the idempotency key
`schedule:<schedule id>:<tick in UTC>`, which the unique (tenant, idempotency_key) index
admits once; the schedule row (its next tick) is written in the transaction that holds its
lock, after the execution is created. A crash between the two leaves the old next tick: the
next pass computes the same tick and key, and gets the same execution back.

Ticks missed while nothing ran (beat or the workers down): only the latest one runs, once;
the next tick is the first after it. A disabled schedule has no next tick; enabling it
starts from the next tick after that moment.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from app.config import Settings
from app.errors import AgentNotFoundError, BudgetExceededError, ConflictError, ScheduleNotFoundError
from app.execution import cron
from app.execution.repository import ExecutionRepository
from app.execution.state_manager import ExecutionStateManager
from app.models import Execution, Schedule
from app.schemas import ExecutionCreate, Pagination, ScheduleCreate, ScheduleUpdate

log = structlog.get_logger(__name__)
_BATCH = 100
_MAX_BATCHES = 50  # per pass: a backlog beyond 5,000 due schedules waits for the next pass
CreateExecution = Callable[..., tuple[Execution, bool]]


def tick_key(schedule_id: uuid.UUID, tick: datetime) -> str:
    """The idempotency key of one tick's execution (one definition, used by every pass)."""
    return f"schedule:{schedule_id}:{tick.astimezone(UTC).isoformat()}"


class Scheduler:
    """Manages schedules and runs the tick (delayed starts and cron schedules)."""

    def __init__(
        self,
        repository: ExecutionRepository,
        state_manager: ExecutionStateManager,
        settings: Settings,
        create_execution: CreateExecution,
    ):
        self.repository = repository
        self.state_manager = state_manager
        self.settings = settings
        self.create_execution = create_execution

    # ------------------------------------------------------------------ the tick

    def tick(self, now: datetime | None = None) -> dict[str, int]:
        """One pass: queue due delayed starts, then create the runs of due schedules.

        `now` replaces the clock (tests drive the cron schedules with it). Returns how many
        executions were started, and how many ticks created (or found) their execution or
        were skipped (a busy task, a spent budget: the schedule's `last_error` says which).
        """
        started = len(self.state_manager.start_scheduled(now=now, limit=500))
        counts = {"started": started, "fired": 0, "skipped": 0}
        for _ in range(_MAX_BATCHES):
            moment = now or datetime.now(UTC)
            with self.repository.unit_of_work(operation="schedule tick") as work:
                rows = self.repository.claim_due_schedules(moment, _BATCH, uow=work)
                for row in rows:
                    counts["fired" if self._fire(row, moment) else "skipped"] += 1
            if len(rows) < _BATCH:
                break
        if any(counts.values()):
            log.info("schedule tick", **counts)
        return counts

    def _fire(self, row: Schedule, moment: datetime) -> bool:
        """Create the execution of the schedule's latest due tick; move its next tick on.

        Runs while the caller's transaction holds the row's lock; the execution is created in
        its own transaction (its key makes a repeat return the same one)."""
        assert row.next_run_at is not None
        latest = cron.latest_at_or_before(row.cron, row.timezone, moment)
        tick = row.next_run_at if latest is None or latest < row.next_run_at else latest
        key = tick_key(row.id, tick)
        error: str | None = None
        try:
            body = ExecutionCreate(
                agent_id=row.agent_id,
                parameters=row.parameters,  # type: ignore[arg-type]  # validated into the model
                task_id=row.task_id,
                on_conflict=row.on_conflict,  # type: ignore[arg-type]
                metadata={"schedule_id": str(row.id), "schedule_tick": tick.astimezone(UTC).isoformat()},
            )
            execution, _ = self.create_execution(body, idempotency_key=key, tenant=row.tenant)
            row.last_execution_id = execution.id
        except ConflictError as exc:  # a busy task (reject), or the key's run made by a pass before
            existing = self.repository.get_by_idempotency_key(row.tenant, key)
            if existing is None:
                error = str(exc)
            else:
                row.last_execution_id = existing.id
        except (BudgetExceededError, AgentNotFoundError) as exc:
            error = str(exc)
        except ValidationError as exc:  # parameters stored before a stricter release: say so, go on
            error = f"the schedule's parameters are not valid any more: {exc.errors()[0]['msg']}"
        if error is not None:
            log.info("schedule tick created no execution", schedule_id=str(row.id), reason=error)
        row.last_error = error
        row.last_run_at = tick
        row.next_run_at = cron.next_after(row.cron, row.timezone, tick)
        if row.next_run_at is None:  # an expression that never fires again (a past year)
            row.enabled = False
        return error is None

    # ------------------------------------------------------------------ the resource

    def create(self, data: ScheduleCreate, *, tenant: str, now: datetime | None = None) -> Schedule:
        """A new schedule (AgentNotFoundError; ConflictError past SCHEDULES_MAX_PER_TENANT)."""
        first = cron.validate(data.cron, data.timezone, now) if data.enabled else None
        row = Schedule(
            id=uuid.uuid4(),
            tenant=tenant,
            agent_id=data.agent_id,
            cron=" ".join(data.cron.split()),
            timezone=data.timezone,
            parameters=data.parameters.model_dump(mode="json", exclude_none=True),
            task_id=data.task_id,
            on_conflict=None if data.on_conflict is None else data.on_conflict.value,
            enabled=data.enabled,
            next_run_at=first,
        )
        created = self.repository.insert_schedule(row, cap=self.settings.schedules_max_per_tenant)
        return self.get(created.id, tenant=tenant)

    def get(self, schedule_id: uuid.UUID, *, tenant: str) -> Schedule:
        """The schedule; ScheduleNotFoundError (also for another tenant's)."""
        row = self.repository.get_schedule(schedule_id, tenant=tenant)
        if row is None:
            raise ScheduleNotFoundError(schedule_id)
        return row

    def list(self, pagination: Pagination, *, tenant: str) -> tuple[list[Schedule], int]:
        """A page of the tenant's schedules, oldest first, and their total."""
        return self.repository.list_schedules(pagination, tenant=tenant)

    def update(
        self, schedule_id: uuid.UUID, data: ScheduleUpdate, *, tenant: str, now: datetime | None = None
    ) -> Schedule:
        """Change the given fields; a new cron, time zone or enabling computes the next tick
        from now (ticks missed while disabled are not run)."""
        changes: dict[str, Any] = data.model_dump(mode="json", exclude_unset=True)
        nullable = {"task_id", "on_conflict"}
        changes = {k: v for k, v in changes.items() if v is not None or k in nullable}

        def change(row: Schedule) -> None:
            retime = any(k in changes for k in ("cron", "timezone")) or (
                changes.get("enabled") is True and not row.enabled
            )
            for field, value in changes.items():
                if field in ("agent_id", "task_id") and value is not None:
                    value = uuid.UUID(value)
                elif field == "cron":
                    value = " ".join(value.split())
                setattr(row, field, value)
            if not row.enabled:
                row.next_run_at = None
            elif retime or row.next_run_at is None:
                row.next_run_at = cron.validate(row.cron, row.timezone, now)

        return self.repository.update_schedule(schedule_id, change, tenant=tenant)

    def delete(self, schedule_id: uuid.UUID, *, tenant: str) -> None:
        """Delete the schedule; the executions it created stay."""
        if not self.repository.delete_schedule(schedule_id, tenant=tenant):
            raise ScheduleNotFoundError(schedule_id)
