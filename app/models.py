"""ORM tables: agents, executions, their state history and the durable event log."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DEFAULT_TENANT = "default"


class Base(DeclarativeBase):
    """Declarative base of every agentexec table."""


class Agent(Base):
    """An agent: a named model configuration executions run with."""

    __tablename__ = "agents"
    __table_args__ = (
        Index("uq_agents_tenant_name", "tenant", "name", unique=True),
        CheckConstraint("max_concurrency > 0", name="ck_agents_max_concurrency"),
        CheckConstraint(
            "on_conflict IN ('allow', 'reject', 'enqueue', 'interrupt')", name="ck_agents_on_conflict"
        ),
        CheckConstraint("daily_token_budget > 0", name="ck_agents_daily_token_budget"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100), server_default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    system_prompt: Mapped[str] = mapped_column(Text, server_default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # At most this many of its executions RUNNING or PAUSING at once (None: no limit).
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The collision policy of its executions' task_id when a create names none (None: allow).
    on_conflict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Tokens its executions may use per UTC day, all together (None: no budget).
    daily_token_budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Tools its `agent` tasks may call: [{name, description, parameters, kind, url}].
    tools: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ToolSecret(Base):
    """A tenant's secret that signs its http tool calls (Standard Webhooks headers)."""

    __tablename__ = "tool_secrets"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    secret: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AgentUsageDaily(Base):
    """Tokens an agent's executions used on one UTC day, and how many executions ended that day."""

    __tablename__ = "agent_usage_daily"
    __table_args__ = (Index("ix_agent_usage_daily_tenant_day", "tenant", "day"),)

    agent_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    # Runs spread their writes over 16 rows per agent and day (no hot row); sum them.
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default=text("0"))
    tenant: Mapped[str] = mapped_column(String(100))
    executions: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    total_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class TenantLimit(Base):
    """A tenant's own concurrency limit, overriding TENANT_MAX_CONCURRENCY (0: no limit)."""

    __tablename__ = "tenant_limits"
    __table_args__ = (CheckConstraint("max_concurrency >= 0", name="ck_tenant_limits_max_concurrency"),)

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    max_concurrency: Mapped[int] = mapped_column(Integer)


_SLOT_STATES = "state IN ('RUNNING', 'PAUSING')"
_ACTIVE_STATES = "state NOT IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')"


class Execution(Base):
    """One run of an agent on a task, and everything known about it."""

    __tablename__ = "executions"
    __table_args__ = (
        # The list filters: every API query is scoped to a tenant, newest first.
        Index("ix_executions_tenant_created", "tenant", "created_at"),
        Index("ix_executions_tenant_state_created", "tenant", "state", "created_at", "id"),
        Index("ix_executions_tenant_agent_created", "tenant", "agent_id", "created_at", "id"),
        Index("ix_executions_tenant_task_created", "tenant", "task_id", "created_at", "id"),
        # Foreign-key checks and "does this agent have active executions".
        Index("ix_executions_agent_created", "agent_id", "created_at"),
        Index(
            "ix_executions_running_heartbeat",
            "state",
            "heartbeat_at",
            postgresql_where=text("state IN ('RUNNING', 'PAUSING', 'CANCELLING')"),
        ),
        Index(
            "ix_executions_queued_at",
            "state",
            "queued_at",
            postgresql_where=text("state = 'QUEUED'"),
        ),
        # Concurrency slots (RUNNING/PAUSING) counted under the slot lock; the waiting line.
        Index("ix_executions_slots_agent", "agent_id", postgresql_where=text(_SLOT_STATES)),
        Index("ix_executions_slots_tenant", "tenant", postgresql_where=text(_SLOT_STATES)),
        Index(
            "ix_executions_waiting",
            "tenant",
            text("priority DESC"),
            "queued_at",
            "id",
            postgresql_where=text("waiting_reason IS NOT NULL"),
        ),
        Index(
            "ix_executions_task_active",
            "tenant",
            "task_id",
            "created_at",
            postgresql_where=text(f"task_id IS NOT NULL AND {_ACTIVE_STATES}"),
        ),
        Index(
            "uq_executions_idempotency",
            "tenant",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Delayed starts the schedule tick moves to QUEUED when due (few rows: only those waiting).
        Index(
            "ix_executions_scheduled",
            "scheduled_at",
            postgresql_where=text("state = 'PENDING' AND scheduled_at IS NOT NULL"),
        ),
        # Waits for tool outputs the reaper times out (few rows: only those waiting).
        Index(
            "ix_executions_action_expires",
            "action_expires_at",
            postgresql_where=text("state = 'REQUIRES_ACTION'"),
        ),
        # The list's and bulk actions' `metadata` filter (jsonb containment, @> only).
        Index(
            "ix_executions_metadata",
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100), server_default=DEFAULT_TENANT)
    agent_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("agents.id", ondelete="RESTRICT")
    )
    task_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(20))
    progress_percentage: Mapped[float] = mapped_column(server_default=text("0"))
    progress_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The collision policy its create resolved to (with a task_id; None for allow).
    on_conflict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Why a QUEUED execution waits ("concurrency_limit", "task_busy"); None otherwise.
    waiting_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Token budget of the whole execution (every call, every attempt) and what it used so far.
    max_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    total_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_retries: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    timeout_seconds: Mapped[int] = mapped_column(Integer, server_default=text("3600"))
    queue: Mapped[str] = mapped_column(String(64), server_default="executions")
    priority: Mapped[int] = mapped_column(SmallInteger, server_default=text("5"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'::jsonb"))
    celery_task_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A delayed start (start_at / delay_seconds, or a schedule's tick): it waits PENDING until then.
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # An agent task waiting for tool outputs (REQUIRES_ACTION): {type, tool_calls, expires_at}
    # and the moment the reaper times the wait out; both NULL when nothing is waiting.
    required_action: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    action_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # How long a wait for tool outputs may last (None: ACTION_TIMEOUT_SECONDS).
    action_timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Schedule(Base):
    """A recurring run: a cron expression in a time zone, and what each tick creates."""

    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_tenant_created", "tenant", "created_at", "id"),
        Index("ix_schedules_due", "next_run_at", postgresql_where=text("enabled")),
        CheckConstraint(
            "on_conflict IN ('allow', 'reject', 'enqueue', 'interrupt')", name="ck_schedules_on_conflict"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    # A schedule goes with its agent.
    agent_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("agents.id", ondelete="CASCADE")
    )
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    task_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    on_conflict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # The next tick (UTC); NULL while disabled.
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_execution_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    # Why the last tick created no execution (a busy task, a spent budget); NULL after a success.
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ExecutionStateHistory(Base):
    """One accepted state transition."""

    __tablename__ = "execution_state_history"
    __table_args__ = (Index("ix_history_execution", "execution_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("executions.id", ondelete="CASCADE")
    )
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ExecutionEvent(Base):
    """One event of the durable log; its id is the global event order."""

    __tablename__ = "execution_events"
    __table_args__ = (
        Index("ix_events_execution", "execution_id", "id"),
        Index("ix_events_txid", "txid", "id", postgresql_where=text("txid IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("executions.id", ondelete="CASCADE")
    )
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The writing transaction's id: webhooks read the log in commit-safe order (app/webhooks).
    txid: Mapped[int | None] = mapped_column(
        BigInteger, nullable=True, server_default=text("(pg_current_xact_id())::text::bigint")
    )


class ApiKey(Base):
    """An API key of a tenant, stored only as its SHA-256 hash."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReaperStatus(Base):
    """The reaper's own record (one row): its last pass, what it did, what it recovered in all."""

    __tablename__ = "reaper_status"
    __table_args__ = (CheckConstraint("id = 1", name="ck_reaper_status_one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    last_pass_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_counts: Mapped[dict[str, Any]] = mapped_column(JSONB)
    recovered: Mapped[dict[str, Any]] = mapped_column(JSONB)
    passes: Mapped[int] = mapped_column(BigInteger)


class RetentionStatus(Base):
    """The retention job's record (one row): its last run and the executions it deleted in all."""

    __tablename__ = "retention_status"
    __table_args__ = (CheckConstraint("id = 1", name="ck_retention_status_one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_deleted: Mapped[int] = mapped_column(BigInteger)
    deleted: Mapped[int] = mapped_column(BigInteger)
    runs: Mapped[int] = mapped_column(BigInteger)


class PeriodicStatus(Base):
    """When one of beat's other passes (the schedule tick, the webhook dispatcher) last ran."""

    __tablename__ = "periodic_status"

    task: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    runs: Mapped[int] = mapped_column(BigInteger)


class Webhook(Base):
    """A tenant's webhook endpoint: where its events are POSTed, signed with its secret."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant_created", "tenant", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    secret: Mapped[str] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Deliveries in a row that ended failed; a success resets it, and so does re-enabling.
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One event for one endpoint; its id is the `webhook-id` every attempt carries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'delivering', 'succeeded', 'failed')", name="ck_webhook_deliveries_status"
        ),
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_event"),
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
        Index("ix_webhook_deliveries_event", "event_id"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'delivering')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    event_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("execution_events.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When it is due; while `delivering`, when the claim's lease runs out (a killed worker).
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The claim a send task carries: a task whose claim was taken over sends nothing.
    lease_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookCursor(Base):
    """How far the webhook dispatcher has read the event log (one row): (txid, id) of the last event."""

    __tablename__ = "webhook_cursor"
    __table_args__ = (CheckConstraint("id = 1", name="ck_webhook_cursor_one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    last_txid: Mapped[int] = mapped_column(BigInteger)
    last_event_id: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
