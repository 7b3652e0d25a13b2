"""Concurrency limits: agents.max_concurrency, per-tenant limits, executions.waiting_reason, and
the two functions the claim and the end of a run use to take and give back a slot atomically.

A slot is an execution in RUNNING or PAUSING. `agentexec_take_slot` is called in the WHERE of
the claim (and of `mark_waiting`): when the tenant or the agent has a limit it takes a
transaction-level advisory lock (tenant first, then agent: one order, no deadlock) and counts
the slots held. A plpgsql function's statements each see a fresh snapshot under READ
COMMITTED, so the count, taken after the lock, sees every claim committed before it: two
claims can never both take the last slot. `agentexec_release_slot`, called by a write that
leaves a slot state, takes the same locks and says whether someone waits for a slot, so a
waiter marked at the same moment is never missed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIMITS = """
    SELECT a.max_concurrency INTO agent_limit FROM agents a WHERE a.id = p_agent;
    SELECT coalesce((SELECT t.max_concurrency FROM tenant_limits t WHERE t.tenant = p_tenant),
                    p_tenant_default) INTO tenant_limit;
"""
_LOCKS = """
    IF tenant_limit > 0 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('agentexec.slots.tenant:' || p_tenant, 0));
    END IF;
    IF agent_limit IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('agentexec.slots.agent:' || p_agent::text, 0));
    END IF;
"""

TAKE = f"""
CREATE FUNCTION agentexec_take_slot(p_tenant text, p_agent uuid, p_tenant_default integer)
RETURNS boolean LANGUAGE plpgsql VOLATILE COST 10000 AS $$
DECLARE
    agent_limit integer;
    tenant_limit integer;
BEGIN
{_LIMITS}
    IF (tenant_limit IS NULL OR tenant_limit <= 0) AND agent_limit IS NULL THEN
        RETURN true;
    END IF;
{_LOCKS}
    IF tenant_limit > 0 AND (SELECT count(*) FROM executions e WHERE e.tenant = p_tenant
                             AND e.state IN ('RUNNING', 'PAUSING')) >= tenant_limit THEN
        RETURN false;
    END IF;
    IF agent_limit IS NOT NULL AND (SELECT count(*) FROM executions e WHERE e.agent_id = p_agent
                                    AND e.state IN ('RUNNING', 'PAUSING')) >= agent_limit THEN
        RETURN false;
    END IF;
    RETURN true;
END $$;
"""

RELEASE = f"""
CREATE FUNCTION agentexec_release_slot(p_tenant text, p_agent uuid, p_tenant_default integer)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    agent_limit integer;
    tenant_limit integer;
BEGIN
{_LIMITS}
    IF (tenant_limit IS NULL OR tenant_limit <= 0) AND agent_limit IS NULL THEN
        RETURN false;
    END IF;
{_LOCKS}
    RETURN EXISTS (SELECT 1 FROM executions w WHERE w.tenant = p_tenant AND w.state = 'QUEUED'
                   AND w.waiting_reason = 'concurrency_limit');
END $$;
"""


def upgrade() -> None:
    op.add_column("agents", sa.Column("max_concurrency", sa.Integer, nullable=True))
    op.create_check_constraint("ck_agents_max_concurrency", "agents", "max_concurrency > 0")
    op.create_table(
        "tenant_limits",
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("max_concurrency", sa.Integer, nullable=False),
        sa.CheckConstraint("max_concurrency >= 0", name="ck_tenant_limits_max_concurrency"),
    )
    op.add_column("executions", sa.Column("waiting_reason", sa.String(32), nullable=True))
    # The slots held, counted under the lock: small partial indexes (only RUNNING/PAUSING rows).
    slot = sa.text("state IN ('RUNNING', 'PAUSING')")
    op.create_index("ix_executions_slots_agent", "executions", ["agent_id"], postgresql_where=slot)
    op.create_index("ix_executions_slots_tenant", "executions", ["tenant"], postgresql_where=slot)
    op.create_index(
        "ix_executions_waiting",
        "executions",
        ["tenant", sa.text("priority DESC"), "queued_at", "id"],
        postgresql_where=sa.text("waiting_reason IS NOT NULL"),
    )
    op.execute(TAKE)
    op.execute(RELEASE)


def downgrade() -> None:
    op.execute("DROP FUNCTION agentexec_release_slot(text, uuid, integer)")
    op.execute("DROP FUNCTION agentexec_take_slot(text, uuid, integer)")
    op.drop_index("ix_executions_waiting", table_name="executions")
    op.drop_index("ix_executions_slots_tenant", table_name="executions")
    op.drop_index("ix_executions_slots_agent", table_name="executions")
    op.drop_column("executions", "waiting_reason")
    op.drop_table("tenant_limits")
    op.drop_constraint("ck_agents_max_concurrency", "agents")
    op.drop_column("agents", "max_concurrency")
