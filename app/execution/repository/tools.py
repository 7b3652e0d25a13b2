"""Agent tools: the tenants' tool-signing secrets and the waits for tool outputs that expired."""

from __future__ import annotations

from typing import Any

from app.execution.repository.base import RepositoryBase

_UPSERT_SECRET = (
    "INSERT INTO tool_secrets (tenant, secret) VALUES (%(t)s, %(s)s) "
    "ON CONFLICT (tenant) DO UPDATE SET secret = EXCLUDED.secret, created_at = now()"
)


class ToolRows(RepositoryBase):
    """Handles the database operations of agent tools."""

    def set_tool_secret(self, tenant: str, secret: str) -> None:
        """Store the tenant's tool-signing secret, replacing an earlier one (a rotation)."""
        with self._work(None, "set_tool_secret") as work:
            work.connection.exec_driver_sql(_UPSERT_SECRET, {"t": tenant, "s": secret})

    def get_tool_secret(self, tenant: str) -> str | None:
        """The tenant's tool-signing secret, or None when it never made one."""
        with self._work(None, "get_tool_secret") as work:
            row = work.connection.exec_driver_sql(
                "SELECT secret FROM tool_secrets WHERE tenant = %(t)s", {"t": tenant}
            ).first()
            return None if row is None else str(row[0])

    def expired_actions(self, limit: int) -> list[Any]:
        """(id, attempt) of executions whose wait for tool outputs expired, oldest first (the
        partial index of migration 0013 holds only the waiting rows)."""
        sql = (
            "SELECT id, attempt FROM executions WHERE state = 'REQUIRES_ACTION'"
            " AND action_expires_at <= now() ORDER BY action_expires_at LIMIT %(n)s"
        )
        with self._work(None, "expired_actions") as work:
            return list(work.connection.exec_driver_sql(sql, {"n": limit}))
