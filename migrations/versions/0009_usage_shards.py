"""agent_usage_daily gets a shard column in its key: every run of an agent used to add its
usage to ONE row per day, and with dozens of runs ending at once that row was a hot spot (row
lock waits and a long chain of row versions). A run writes to shard hash(execution) % 16; the
day's usage is the sum of its shards.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 15:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "agent_usage_daily", sa.Column("shard", sa.SmallInteger, nullable=False, server_default=sa.text("0"))
    )
    op.drop_constraint("agent_usage_daily_pkey", "agent_usage_daily", type_="primary")
    op.create_primary_key("agent_usage_daily_pkey", "agent_usage_daily", ["agent_id", "day", "shard"])


def downgrade() -> None:
    op.execute(
        "CREATE TEMP TABLE usage_merged AS SELECT agent_id, day, min(tenant) AS tenant,"
        " sum(executions) AS executions, sum(prompt_tokens) AS prompt_tokens,"
        " sum(completion_tokens) AS completion_tokens, sum(total_tokens) AS total_tokens"
        " FROM agent_usage_daily GROUP BY agent_id, day"
    )
    op.execute("DELETE FROM agent_usage_daily")
    op.drop_constraint("agent_usage_daily_pkey", "agent_usage_daily", type_="primary")
    op.drop_column("agent_usage_daily", "shard")
    op.execute(
        "INSERT INTO agent_usage_daily (agent_id, day, tenant, executions, prompt_tokens,"
        " completion_tokens, total_tokens) SELECT * FROM usage_merged"
    )
    op.create_primary_key("agent_usage_daily_pkey", "agent_usage_daily", ["agent_id", "day"])
