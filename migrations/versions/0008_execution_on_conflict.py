"""executions.on_conflict: the collision policy a create of a task_id resolved to, so the
hand-over of a busy task can skip waiters that a newer interrupting execution cancels.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("on_conflict", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "on_conflict")
