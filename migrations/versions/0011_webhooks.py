"""webhooks: tenants' endpoints, one delivery row per (endpoint, event), and the fan-out cursor.

Deliveries are made from the durable event log. The dispatcher reads `execution_events` in the
order of the transactions that wrote them: each event gets `txid` (its writer's transaction id,
filled in by the column default, so no writer changes), and the dispatcher only reads events of
transactions older than every transaction still running (`pg_snapshot_xmin`). A plain id cursor
would skip an event whose transaction took its id first and committed after a later id was read.
The cursor (one row) is the last (txid, id) read; events written before this migration keep a
NULL txid and are never fanned out.

A delivery's id is its Standard Webhooks `webhook-id`, the same on every attempt. Its event is a
foreign key with ON DELETE CASCADE: deleting an execution (by hand or by retention) deletes its
events and so their deliveries, and the purge never trips over them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TXID = sa.text("(pg_current_xact_id())::text::bigint")


def upgrade() -> None:
    # Nullable and the default set afterwards: no rewrite of the table; old rows stay NULL.
    op.add_column("execution_events", sa.Column("txid", sa.BigInteger, nullable=True))
    op.alter_column("execution_events", "txid", server_default=TXID)
    op.create_index(
        "ix_events_txid", "execution_events", ["txid", "id"], postgresql_where=sa.text("txid IS NOT NULL")
    )
    op.create_table(
        "webhooks",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", ARRAY(sa.Text), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("enabled", sa.Boolean, server_default=sa.text("true"), nullable=False),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("consecutive_failures", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_webhooks_tenant_created", "webhooks", ["tenant", "created_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "webhook_id", UUID(as_uuid=True), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "event_id",
            sa.BigInteger,
            sa.ForeignKey("execution_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer, server_default=sa.text("0"), nullable=False),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", UUID(as_uuid=True), nullable=True),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivering', 'succeeded', 'failed')", name="ck_webhook_deliveries_status"
        ),
        sa.UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_event"),
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_created", "webhook_deliveries", ["webhook_id", "created_at"]
    )
    op.create_index("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id"])
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status IN ('pending', 'delivering')"),
    )
    op.create_table(
        "webhook_cursor",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("last_txid", sa.BigInteger, nullable=False),
        sa.Column("last_event_id", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_webhook_cursor_one_row"),
    )


def downgrade() -> None:
    op.drop_table("webhook_cursor")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_index("ix_events_txid", table_name="execution_events")
    op.drop_column("execution_events", "txid")
