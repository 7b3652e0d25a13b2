"""The reaper's own record: when it last ran, what that pass did, and what it recovered in all.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 12:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reaper_status",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("last_pass_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_counts", JSONB, nullable=False),
        sa.Column("recovered", JSONB, nullable=False),
        sa.Column("passes", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_reaper_status_one_row"),
    )


def downgrade() -> None:
    op.drop_table("reaper_status")
