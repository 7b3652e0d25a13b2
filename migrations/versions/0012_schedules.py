"""schedules: delayed starts (executions.scheduled_at), recurring cron schedules, and the
GIN index of the `metadata` filter.

A delayed execution waits PENDING with `scheduled_at`; the schedule tick (a beat task every
second) finds the due ones through a partial index that holds only those waiting. A schedule
row holds its next tick in UTC; each tick's execution carries the idempotency key
`schedule:<id>:<tick>`, so the unique (tenant, idempotency_key) index of 0001 makes a tick
create one execution however many tick passes run. The metadata index is jsonb_path_ops: it
serves `metadata @> {...}` (the list's and bulk actions' filter) and is smaller than the default.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_executions_scheduled",
        "executions",
        ["scheduled_at"],
        postgresql_where=sa.text("state = 'PENDING' AND scheduled_at IS NOT NULL"),
    )
    op.create_index(
        "ix_executions_metadata",
        "executions",
        ["metadata"],
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_table(
        "schedules",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column(
            "agent_id", UUID(as_uuid=True), sa.ForeignKey("agents.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("parameters", JSONB, nullable=False),
        sa.Column("task_id", UUID(as_uuid=True), nullable=True),
        sa.Column("on_conflict", sa.String(16), nullable=True),
        sa.Column("enabled", sa.Boolean, server_default=sa.text("true"), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_execution_id", UUID(as_uuid=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "on_conflict IN ('allow', 'reject', 'enqueue', 'interrupt')", name="ck_schedules_on_conflict"
        ),
    )
    op.create_index("ix_schedules_tenant_created", "schedules", ["tenant", "created_at", "id"])
    op.create_index("ix_schedules_due", "schedules", ["next_run_at"], postgresql_where=sa.text("enabled"))


def downgrade() -> None:
    op.drop_table("schedules")
    op.drop_index("ix_executions_metadata", table_name="executions")
    op.drop_index("ix_executions_scheduled", table_name="executions")
    op.drop_column("executions", "scheduled_at")
