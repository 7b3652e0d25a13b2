"""periodic_status: when beat's other passes last ran (the schedule tick, the webhook dispatcher).

The reaper and the retention job keep their own records (reaper_status, retention_status).
The schedule tick (delayed starts, cron schedules) and the webhook dispatcher had none, so a
stalled one was invisible: schedules silently stopped firing, deliveries stopped leaving.
One row per pass name, its last run and how many runs; /metrics, /readyz and
`agentexec status` read it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "periodic_status",
        sa.Column("task", sa.String(64), primary_key=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("runs", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("periodic_status")
