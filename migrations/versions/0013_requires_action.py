"""requires_action: agents that call tools and wait for a person.

An `agent` task that asks for `client` tools waits REQUIRES_ACTION with `required_action`
({type, tool_calls, expires_at}); the reaper finds the expired waits through a partial
index holding only the waiting rows. `action_timeout_seconds` is the create field that sets
`expires_at`. Agents get `tools`; each tenant gets at most one tool-signing secret (its http
tools' calls carry Standard Webhooks signatures). `state` has no CHECK constraint (it is
validated by the transition table), so the new state needs no constraint change.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 16:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("required_action", JSONB, nullable=True))
    op.add_column("executions", sa.Column("action_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("executions", sa.Column("action_timeout_seconds", sa.Integer, nullable=True))
    op.create_index(
        "ix_executions_action_expires",
        "executions",
        ["action_expires_at"],
        postgresql_where=sa.text("state = 'REQUIRES_ACTION'"),
    )
    op.add_column("agents", sa.Column("tools", JSONB, server_default=sa.text("'[]'::jsonb"), nullable=False))
    op.create_table(
        "tool_secrets",
        sa.Column("tenant", sa.String(100), primary_key=True),
        sa.Column("secret", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tool_secrets")
    op.drop_column("agents", "tools")
    op.drop_index("ix_executions_action_expires", table_name="executions")
    op.drop_column("executions", "action_timeout_seconds")
    op.drop_column("executions", "action_expires_at")
    op.drop_column("executions", "required_action")
