"""List indexes lead with the tenant, as every API query is scoped to one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 02:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_executions_tenant_state_created", "executions", ["tenant", "state", "created_at", "id"]
    )
    op.create_index(
        "ix_executions_tenant_agent_created", "executions", ["tenant", "agent_id", "created_at", "id"]
    )
    op.create_index(
        "ix_executions_tenant_task_created", "executions", ["tenant", "task_id", "created_at", "id"]
    )
    op.drop_index("ix_executions_state_created", table_name="executions")
    op.drop_index("ix_executions_task_created", table_name="executions")


def downgrade() -> None:
    op.create_index("ix_executions_task_created", "executions", ["task_id", "created_at"])
    op.create_index("ix_executions_state_created", "executions", ["state", "created_at"])
    op.drop_index("ix_executions_tenant_task_created", table_name="executions")
    op.drop_index("ix_executions_tenant_agent_created", table_name="executions")
    op.drop_index("ix_executions_tenant_state_created", table_name="executions")
