"""executions.error_code: the machine-readable reason an execution ended FAILED, TIMED_OUT or CANCELLED.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 13:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("error_code", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "error_code")
