"""Token usage and budgets: per-execution counters and max_tokens, the agents' daily budget,
and the per-agent per-UTC-day usage rollup that enforces it (and answers GET /v1/usage).

Usage is added as it is recorded: a pipeline step's when its checkpoint is saved, a standard
run's with its end; both in the same statement as that write.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("max_tokens", sa.BigInteger, nullable=True))
    for column in ("prompt_tokens", "completion_tokens", "total_tokens"):
        op.add_column(
            "executions", sa.Column(column, sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )
    op.add_column("agents", sa.Column("daily_token_budget", sa.BigInteger, nullable=True))
    op.create_check_constraint("ck_agents_daily_token_budget", "agents", "daily_token_budget > 0")
    op.create_table(
        "agent_usage_daily",
        sa.Column("agent_id", UUID(as_uuid=True), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("executions", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("total_tokens", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("agent_id", "day"),
    )
    op.create_index("ix_agent_usage_daily_tenant_day", "agent_usage_daily", ["tenant", "day"])


def downgrade() -> None:
    op.drop_index("ix_agent_usage_daily_tenant_day", table_name="agent_usage_daily")
    op.drop_table("agent_usage_daily")
    op.drop_constraint("ck_agents_daily_token_budget", "agents")
    op.drop_column("agents", "daily_token_budget")
    for column in ("total_tokens", "completion_tokens", "prompt_tokens", "max_tokens"):
        op.drop_column("executions", column)
