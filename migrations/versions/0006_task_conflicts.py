"""Collision policy for task_id: agents.on_conflict, and the functions that make a create's
check and insert one atomic step and hand a busy task to the next execution in line.

`agentexec_task_guard` resolves the policy (the request's, else the agent's, else allow);
for any policy but allow it takes a transaction-level advisory lock on (tenant, task_id) and
returns the task's active executions, read with a fresh snapshot after the lock: two creates
of the same task can never both see it idle. `agentexec_task_released`, called by a write that
ends an execution of a task, takes the same lock and says whether an execution waits for the
task ("task_busy"), so a waiter inserted at the same moment is never missed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = "state NOT IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED')"
_LOCK = (
    "PERFORM pg_advisory_xact_lock("
    "hashtextextended('agentexec.task:' || p_tenant || ':' || p_task::text, 0));"
)

GUARD = f"""
CREATE FUNCTION agentexec_task_guard(p_tenant text, p_task uuid, p_agent uuid, p_policy text)
RETURNS TABLE (policy text, active uuid[]) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    policy := coalesce(p_policy, (SELECT a.on_conflict FROM agents a WHERE a.id = p_agent), 'allow');
    IF policy = 'allow' THEN
        active := '{{}}';
        RETURN NEXT;
        RETURN;
    END IF;
    {_LOCK}
    active := coalesce((SELECT array_agg(e.id ORDER BY e.created_at, e.id) FROM executions e
                        WHERE e.tenant = p_tenant AND e.task_id = p_task AND e.{_ACTIVE}), '{{}}');
    RETURN NEXT;
END $$;
"""

RELEASED = f"""
CREATE FUNCTION agentexec_task_released(p_tenant text, p_task uuid)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_task IS NULL THEN
        RETURN false;
    END IF;
    {_LOCK}
    RETURN EXISTS (SELECT 1 FROM executions w WHERE w.tenant = p_tenant AND w.task_id = p_task
                   AND w.state = 'QUEUED' AND w.waiting_reason = 'task_busy');
END $$;
"""


def upgrade() -> None:
    op.add_column("agents", sa.Column("on_conflict", sa.String(16), nullable=True))
    op.create_check_constraint(
        "ck_agents_on_conflict", "agents", "on_conflict IN ('allow', 'reject', 'enqueue', 'interrupt')"
    )
    op.create_index(
        "ix_executions_task_active",
        "executions",
        ["tenant", "task_id", "created_at"],
        postgresql_where=sa.text(f"task_id IS NOT NULL AND {_ACTIVE}"),
    )
    op.execute(GUARD)
    op.execute(RELEASED)


def downgrade() -> None:
    op.execute("DROP FUNCTION agentexec_task_released(text, uuid)")
    op.execute("DROP FUNCTION agentexec_task_guard(text, uuid, uuid, text)")
    op.drop_index("ix_executions_task_active", table_name="executions")
    op.drop_constraint("ck_agents_on_conflict", "agents")
    op.drop_column("agents", "on_conflict")
