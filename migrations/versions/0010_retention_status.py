"""retention_status: when the retention job last ran and how many executions it deleted in all
(for /metrics: agentexec_retention_deleted_total, agentexec_retention_last_run_age_seconds).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retention_status",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_deleted", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.BigInteger, nullable=False),
        sa.Column("runs", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_retention_status_one_row"),
    )


def downgrade() -> None:
    op.drop_table("retention_status")
