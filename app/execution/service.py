"""ExecutionService: the facade the API and the workers call, and nothing deeper."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

import structlog

from app.auth import ApiKeyStore
from app.config import Settings
from app.errors import (
    AgentNotFoundError,
    BudgetExceededError,
    ConflictError,
    ExecutionNotFoundError,
    InvalidExecutionStateError,
)
from app.events import EventBus
from app.execution import agent_input
from app.execution.control import ControlHub
from app.execution.dispatch import TaskDispatcher
from app.execution.event_emitter import ExecutionEventEmitter
from app.execution.policy import Outcome, seconds_to_utc_midnight
from app.execution.progress_tracker import ExecutionProgressTracker
from app.execution.reaper import Reaper
from app.execution.repository import ExecutionRepository
from app.execution.scheduler import Scheduler
from app.execution.state_manager import ExecutionStateManager
from app.execution.task_runner import ExecutionTaskRunner
from app.execution.tools import check_tools
from app.execution.writer import Expr
from app.metrics import ExecutionStatsCollector
from app.models import DEFAULT_TENANT, Agent, Execution, ExecutionEvent, ExecutionStateHistory, Schedule
from app.ratelimit import RateLimiter
from app.schemas import (
    FINISHED_STATES,
    AgentCreate,
    AgentUpdate,
    BulkAction,
    ExecutionCreate,
    ExecutionFilters,
    ExecutionState,
    Pagination,
    ScheduleCreate,
    ScheduleUpdate,
    ToolOutputsSubmit,
)

S = ExecutionState


def request_fingerprint(body: ExecutionCreate) -> str:
    """SHA-256 of the canonical JSON of a create request (idempotency comparison).

    Fields added later count only when given, so a key used before they existed still matches."""
    names = ("start_at", "delay_seconds", "action_timeout_seconds")
    later: dict[str, Any] = {name: True for name in names if getattr(body, name) is None}
    params: dict[str, Any] = {}
    if body.parameters.max_turns is None:
        params["max_turns"] = True
    if body.parameters.simulate is not None and body.parameters.simulate.tool_calls is None:
        params["simulate"] = {"tool_calls": True}
    if params:
        later["parameters"] = params
    canonical = json.dumps(body.model_dump(mode="json", exclude=later), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _utc_day(moment: datetime | None) -> date | None:
    """The UTC day of a moment; one without a time zone is taken as UTC."""
    if moment is None:
        return None
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)).date()


log = structlog.get_logger(__name__)


# What a cancel or a retry does from each state (any other state refuses it).
CANCEL_TARGETS: dict[ExecutionState, ExecutionState] = {
    S.PENDING: S.CANCELLED,
    S.QUEUED: S.CANCELLED,
    S.PAUSED: S.CANCELLED,
    S.REQUIRES_ACTION: S.CANCELLED,  # nothing runs while it waits: cancelled at once
    S.RUNNING: S.CANCELLING,
    S.PAUSING: S.CANCELLING,
}
RETRY_TARGETS: dict[ExecutionState, ExecutionState] = {S.FAILED: S.QUEUED, S.TIMED_OUT: S.QUEUED}


class ExecutionService:
    """Creates, runs, controls and reads executions and agents."""

    def __init__(
        self,
        repository: ExecutionRepository,
        state_manager: ExecutionStateManager,
        progress_tracker: ExecutionProgressTracker,
        event_emitter: ExecutionEventEmitter,
        task_runner: ExecutionTaskRunner,
        background_tasks: TaskDispatcher | None,
        settings: Settings,
        event_bus: EventBus | None = None,
        control_hub: ControlHub | None = None,
        reaper: Reaper | None = None,
    ):
        self.repository = repository
        self.state_manager = state_manager
        self.progress_tracker = progress_tracker
        self.event_emitter = event_emitter
        self.task_runner = task_runner
        self.background_tasks = background_tasks
        self.settings = settings
        self.event_bus = event_bus
        self.control_hub = control_hub
        self.reaper = reaper
        # Built by the composition root for the entry points (see app.bootstrap).
        self.keys: ApiKeyStore | None = None
        self.rate_limiter: RateLimiter | None = None
        self.stats: ExecutionStatsCollector | None = None
        self.scheduler: Scheduler | None = None

    # ------------------------------------------------------------- executions

    def create_execution(
        self,
        data: ExecutionCreate,
        *,
        idempotency_key: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Execution, bool]:
        """Create an execution (PENDING, then QUEUED unless `start` is false) in one transaction.

        With `start_at` or `delay_seconds` it stays PENDING with `scheduled_at` (the database's
        clock plus the delay) and the schedule tick queues it when due.

        Args:
            data: the validated request.
            idempotency_key: a repeated key with the same body returns the first execution.
            tenant: the owner.

        Returns:
            (execution, created): created is False for an idempotent repeat.

        Raises:
            AgentNotFoundError: unknown agent (for this tenant).
            ConflictError: the key was used with another body.
            TaskBusyError: on_conflict=reject and the task_id has an active execution.
            BudgetExceededError: the agent's daily token budget is spent (retry_after: seconds).
        """
        fingerprint = request_fingerprint(data) if idempotency_key else None
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "tenant": tenant,
            "agent_id": data.agent_id,
            "task_id": data.task_id,
            "parameters": data.parameters.model_dump(mode="json", exclude_none=True),
            "state": S.PENDING.value,
            "max_retries": (
                self.settings.default_max_retries if data.max_retries is None else data.max_retries
            ),
            "max_tokens": data.max_tokens,
            "action_timeout_seconds": data.action_timeout_seconds,
            "timeout_seconds": data.timeout_seconds or self.settings.default_timeout_seconds,
            "queue": data.queue or self.settings.default_queue,
            "priority": data.priority,
            "metadata_": data.metadata,
            "idempotency_key": idempotency_key,
            "request_fingerprint": fingerprint,
            "context": {},
            "created_at": Expr.NOW,
            "updated_at": Expr.NOW,
        }
        params: dict[str, Any] | None = None
        if data.start_at is not None:
            values["scheduled_at"] = data.start_at
        elif data.delay_seconds is not None:
            values["scheduled_at"] = Expr.NOW_PLUS_DELAY
            params = {"delay_seconds": float(data.delay_seconds)}
        # ONE statement: agent check, row, history and events (nothing when the key was used).
        created = self.state_manager.create(
            values,
            start=data.start and "scheduled_at" not in values,
            tenant=tenant,
            keyed=idempotency_key is not None,
            on_conflict=None if data.on_conflict is None else data.on_conflict.value,
            params=params,
        )
        if created is not None:
            return created, True
        # Nothing was inserted: the key was used, the agent's budget is spent, or no agent.
        if idempotency_key:
            existing = self.repository.get_by_idempotency_key(tenant, idempotency_key)
            if existing is not None:
                if existing.request_fingerprint != fingerprint:
                    raise ConflictError(
                        f"idempotency key {idempotency_key!r} was already used with a different request body"
                    )
                return existing, False
        agent = self.repository.get_agent(data.agent_id, tenant=tenant)
        if agent is None:
            raise AgentNotFoundError(data.agent_id)
        if agent.daily_token_budget is not None:
            used = self.repository.tokens_today(agent.id)
            if used >= agent.daily_token_budget:
                raise BudgetExceededError(
                    f"agent {agent.id} spent its daily token budget: {used} of {agent.daily_token_budget} "
                    "tokens today (UTC); it renews at midnight UTC",
                    retry_after=seconds_to_utc_midnight(),
                )
        # The agent is there and within budget now: the key's first execution was deleted
        # meanwhile, or the budget's day turned; another try decides.
        if idempotency_key:
            raise ConflictError(f"idempotency key {idempotency_key!r} is being reused; try again")
        raise ConflictError("the agent changed while the execution was being created; try again")

    def start_execution(
        self, execution_id: uuid.UUID, *, tenant: str | None = None, reason: str | None = None
    ) -> Execution:
        """PENDING -> QUEUED (sends the task)."""
        return self.state_manager.change_state(
            execution_id, S.QUEUED, reason or "started", tenant=tenant, expected_state=S.PENDING
        )

    def get_execution(self, execution_id: uuid.UUID, *, tenant: str | None = None) -> Execution:
        """The execution; raises ExecutionNotFoundError."""
        row = self.repository.get_by_id(execution_id, tenant=tenant)
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        return row

    def list_executions(
        self, filters: ExecutionFilters, pagination: Pagination, *, tenant: str | None = None
    ) -> tuple[list[Execution], int]:
        """A newest-first page and the total."""
        return self.repository.list_executions(filters, pagination, tenant=tenant)

    def list_executions_page(
        self, filters: ExecutionFilters, pagination: Pagination, *, tenant: str | None = None
    ) -> tuple[list[Execution], int, bool]:
        """A newest-first page, the total and whether it is exact (broad filters over millions
        of rows get the planner's estimate instead of a slow count)."""
        return self.repository.list_executions_page(filters, pagination, tenant=tenant)

    def delete_execution(self, execution_id: uuid.UUID, *, tenant: str | None = None) -> None:
        """Delete a finished execution; InvalidExecutionStateError while it is active."""
        if self.repository.delete_execution(execution_id, tenant=tenant, only_states=FINISHED_STATES):
            return
        row = self.get_execution(execution_id, tenant=tenant)
        raise InvalidExecutionStateError(
            execution_id,
            row.state,
            "DELETED",
            f"execution {execution_id} is {row.state}; only finished executions can be deleted",
        )

    def get_state_history(
        self, execution_id: uuid.UUID, limit: int = 10, *, tenant: str | None = None
    ) -> list[ExecutionStateHistory]:
        """The last `limit` transitions, oldest first."""
        self.get_execution(execution_id, tenant=tenant)
        return self.repository.get_state_history(execution_id, limit)

    def get_events(
        self, execution_id: uuid.UUID, after: int = 0, limit: int = 1000, *, tenant: str | None = None
    ) -> list[ExecutionEvent]:
        """Logged events after event id `after`, in order."""
        if tenant is not None:
            self.get_execution(execution_id, tenant=tenant)
        return self.repository.get_events(execution_id, after, limit)

    # ---------------------------------------------------------------- workers

    def run_attempt(self, execution_id: uuid.UUID, attempt: int, worker: str = "local") -> Outcome:
        """Claim one attempt of an execution and run it to its end (the Celery task's body).

        Args:
            execution_id: the execution.
            attempt: the attempt the message was sent for; a stale or duplicate one claims nothing.
            worker: the worker's name, stored on the execution.

        Returns:
            The outcome (SKIPPED when the claim was refused).
        """
        return self.task_runner.run(execution_id, attempt, worker)

    def reap(self) -> dict[str, int]:
        """One reaper pass (stale heartbeats, deadlines, unclaimed messages); what it did, by kind."""
        if self.reaper is None:
            raise RuntimeError("this service was built without a reaper")
        return self.reaper.run_once()

    # ---------------------------------------------------------------- control

    def cancel_execution(
        self, execution_id: uuid.UUID, *, tenant: str | None = None, reason: str | None = None
    ) -> Execution:
        """PENDING/QUEUED/PAUSED -> CANCELLED; RUNNING/PAUSING -> CANCELLING (the worker stops)."""
        return self._control(execution_id, tenant, reason or "cancelled by request", CANCEL_TARGETS)

    def pause_execution(
        self, execution_id: uuid.UUID, *, tenant: str | None = None, reason: str | None = None
    ) -> Execution:
        """RUNNING -> PAUSING; the worker stops at the next step boundary -> PAUSED."""
        return self._control(execution_id, tenant, reason or "paused by request", {S.RUNNING: S.PAUSING})

    def resume_execution(
        self, execution_id: uuid.UUID, *, tenant: str | None = None, reason: str | None = None
    ) -> Execution:
        """PAUSED -> QUEUED with a new attempt that continues after the last finished step."""
        return self._control(execution_id, tenant, reason or "resumed by request", {S.PAUSED: S.QUEUED})

    def retry_execution(
        self, execution_id: uuid.UUID, *, tenant: str | None = None, reason: str | None = None
    ) -> Execution:
        """FAILED/TIMED_OUT -> QUEUED with a new attempt."""
        return self._control(execution_id, tenant, reason or "retried by request", RETRY_TARGETS)

    def submit_tool_outputs(
        self,
        execution_id: uuid.UUID,
        body: ToolOutputsSubmit,
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
    ) -> Execution:
        """REQUIRES_ACTION -> QUEUED with the client tools' outputs (app/execution/agent_input.py)."""
        return agent_input.submit_tool_outputs(
            self.repository,
            self.state_manager,
            execution_id,
            body,
            tenant=tenant,
            idempotency_key=idempotency_key,
        )

    def rotate_tool_secret(self, *, tenant: str = DEFAULT_TENANT) -> str:
        """A new tool-signing secret for the tenant's http tool calls (the earlier one stops)."""
        return agent_input.rotate_tool_secret(self.repository, tenant)

    def bulk(self, action: str, request: BulkAction, *, tenant: str | None = None) -> dict[str, Any]:
        """Cancel or retry many executions (`ids`, or the newest `limit` a filter matches), each
        through the same guarded transition as a single call, one short statement at a time.

        Returns {matched, changed, skipped: [{id, state, reason}]}; `dry_run` changes nothing
        and says what would.
        """
        targets, verb, default_reason = {
            "cancel": (CANCEL_TARGETS, "cancelled", "cancelled in bulk"),
            "retry": (RETRY_TARGETS, "retried", "retried in bulk"),
        }[action]
        skipped: list[dict[str, Any]] = []
        if request.ids is not None:
            wanted = list(dict.fromkeys(request.ids))
            states = self.repository.states_of(wanted, tenant=tenant)
            skipped += [{"id": i, "state": None, "reason": "not found"} for i in wanted if i not in states]
            rows = [(i, states[i]) for i in wanted if i in states]
        else:
            assert request.filter is not None
            rows = self.repository.matching(request.filter, request.limit, tenant=tenant)
        changed = 0
        for execution_id, state in rows:
            if S(state) not in targets:
                skipped.append(
                    {"id": execution_id, "state": state, "reason": f"a {state} execution cannot be {verb}"}
                )
                continue
            if request.dry_run:
                changed += 1
                continue
            try:
                self._control(execution_id, tenant, request.reason or default_reason, targets)
                changed += 1
            except (InvalidExecutionStateError, ExecutionNotFoundError) as exc:  # it moved meanwhile
                skipped.append({"id": execution_id, "state": state, "reason": str(exc)})
        return {"matched": len(rows), "changed": changed, "skipped": skipped}

    def _control(
        self,
        execution_id: uuid.UUID,
        tenant: str | None,
        reason: str,
        targets: dict[ExecutionState, ExecutionState],
    ) -> Execution:
        for _ in range(3):
            current = S(self.get_execution(execution_id, tenant=tenant).state)
            target = targets.get(current)
            if target is None:
                allowed = ", ".join(s.value for s in targets)
                raise InvalidExecutionStateError(
                    execution_id,
                    current,
                    next(iter(targets.values())),
                    f"execution {execution_id} is {current.value}; this needs one of: {allowed}",
                )
            try:
                return self.state_manager.change_state(
                    execution_id, target, reason, expected_state=current, tenant=tenant
                )
            except InvalidExecutionStateError:
                continue  # the state moved under us; decide again from the new one
        raise InvalidExecutionStateError(execution_id, current, "?", "the execution is changing; try again")

    # ------------------------------------------------------------------ retention

    def purge(self, older_than_seconds: float | None = None, *, dry_run: bool = False) -> int:
        """Delete finished executions older than `older_than_seconds` (default RETENTION_DAYS)
        with their history and events, in batches of 1,000; how many (would) go. 0 days: none."""
        if older_than_seconds is None:
            if self.settings.retention_days <= 0:
                return 0
            older_than_seconds = self.settings.retention_days * 86400.0
        if older_than_seconds < 0:
            raise ValueError("older_than_seconds must not be negative")
        deleted = self.repository.purge_finished(older_than_seconds, dry_run=dry_run)
        if not dry_run:
            self.repository.record_retention_run(deleted)
            if deleted:
                log.info("retention deleted finished executions", deleted=deleted)
        return deleted

    # ------------------------------------------------------------------ schedules

    def _scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise RuntimeError("this service was built without a scheduler")
        return self.scheduler

    def tick_schedules(self, now: datetime | None = None) -> dict[str, int]:
        """One schedule tick: queue due delayed starts, create the runs of due cron schedules
        (`now` replaces the clock, for tests); what it did."""
        return self._scheduler().tick(now)

    def create_schedule(self, data: ScheduleCreate, *, tenant: str = DEFAULT_TENANT) -> Schedule:
        """A new cron schedule; AgentNotFoundError, ConflictError past SCHEDULES_MAX_PER_TENANT."""
        return self._scheduler().create(data, tenant=tenant)

    def list_schedules(
        self, pagination: Pagination, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[Schedule], int]:
        """A page of the tenant's schedules and their total."""
        return self._scheduler().list(pagination, tenant=tenant)

    def get_schedule(self, schedule_id: uuid.UUID, *, tenant: str = DEFAULT_TENANT) -> Schedule:
        """The schedule; ScheduleNotFoundError."""
        return self._scheduler().get(schedule_id, tenant=tenant)

    def update_schedule(
        self, schedule_id: uuid.UUID, data: ScheduleUpdate, *, tenant: str = DEFAULT_TENANT
    ) -> Schedule:
        """Change the given fields of a schedule (its next tick follows)."""
        return self._scheduler().update(schedule_id, data, tenant=tenant)

    def delete_schedule(self, schedule_id: uuid.UUID, *, tenant: str = DEFAULT_TENANT) -> None:
        """Delete a schedule; the executions it created stay."""
        self._scheduler().delete(schedule_id, tenant=tenant)

    # ------------------------------------------------------------------ limits and usage

    def set_tenant_limit(self, tenant: str, max_concurrency: int | None) -> None:
        """Give a tenant its own concurrency limit (0: none) or remove it (None: the
        TENANT_MAX_CONCURRENCY setting applies); waiters that now fit start at once."""
        if max_concurrency is not None and max_concurrency < 0:
            raise ValueError("a tenant limit is 0 (no limit) or more")
        self.repository.set_tenant_limit(tenant, max_concurrency)
        effective = self.settings.tenant_max_concurrency if max_concurrency is None else max_concurrency
        self.state_manager.wake_waiters(tenant, uuid.UUID(int=0), effective or 1000)

    def tenant_slots(self) -> list[dict[str, Any]]:
        """Each tenant with a limit or executions holding or waiting for slots."""
        return [
            {
                "tenant": r.tenant,
                "max_concurrency": int(r.max_concurrency),
                "own_limit": bool(r.own),
                "running": int(r.held),
                "waiting": int(r.waiting),
            }
            for r in self.repository.tenant_slots(self.settings.tenant_max_concurrency)
        ]

    def usage(
        self,
        *,
        tenant: str,
        group_by: str = "agent",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        agent_id: uuid.UUID | None = None,
    ) -> list[dict[str, Any]]:
        """Token usage by agent, by UTC day, or both (`agent_day`), from the daily rollup.

        A day counts the executions that ended on it and the tokens recorded on it; the
        bounds select whole UTC days (the day of `created_after` through that of `created_before`).
        """
        rows = self.repository.usage(
            tenant,
            group_by,
            after=_utc_day(created_after),
            before=_utc_day(created_before),
            agent_id=agent_id,
        )
        return [
            {
                "agent_id": r.agent_id,
                "day": r.day,
                "executions": int(r.executions),
                "prompt_tokens": int(r.prompt_tokens),
                "completion_tokens": int(r.completion_tokens),
                "total_tokens": int(r.total_tokens),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ agents

    def create_agent(self, data: AgentCreate, *, tenant: str = DEFAULT_TENANT) -> Agent:
        """A new agent; ConflictError when the name is taken, UnprocessableError when an http
        tool's url is refused by the outbound guard (TOOL_ALLOWED_HOSTS)."""
        check_tools(data.tools, self.settings)
        return self.repository.create_agent(Agent(tenant=tenant, **data.model_dump(mode="json")))

    def get_agent(self, agent_id: uuid.UUID, *, tenant: str | None = None) -> Agent:
        """The agent; raises AgentNotFoundError."""
        agent = self.repository.get_agent(agent_id, tenant=tenant)
        if agent is None:
            raise AgentNotFoundError(agent_id)
        return agent

    def list_agents(self, pagination: Pagination, *, tenant: str | None = None) -> tuple[list[Agent], int]:
        """A page of agents and their total."""
        return self.repository.list_agents(pagination, tenant=tenant)

    def update_agent(self, agent_id: uuid.UUID, data: AgentUpdate, *, tenant: str | None = None) -> Agent:
        """Change the given fields of an agent."""
        nullable = {"max_concurrency", "on_conflict", "daily_token_budget"}  # null: no limit, allow
        changes = {
            k: v
            for k, v in data.model_dump(mode="json", exclude_unset=True).items()
            if v is not None or k in nullable
        }
        if not changes:
            return self.get_agent(agent_id, tenant=tenant)
        if data.tools is not None:
            check_tools(data.tools, self.settings)
        agent = self.repository.update_agent(agent_id, changes, tenant=tenant)
        if agent is None:
            raise AgentNotFoundError(agent_id)
        if "max_concurrency" in changes:  # a raised or removed limit: waiters may start now
            self.state_manager.wake_waiters(agent.tenant, agent.id, agent.max_concurrency or 1000)
        return agent

    def delete_agent(self, agent_id: uuid.UUID, *, tenant: str | None = None) -> None:
        """Delete an agent with its finished executions (their history and events too), in one
        transaction; ConflictError while any is active."""
        if not self.repository.delete_agent(agent_id, tenant=tenant):
            raise AgentNotFoundError(agent_id)
