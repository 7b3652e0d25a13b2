"""Flow control rows: per-tenant concurrency limits, and token usage by agent and UTC day."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date
from typing import Any

from app.execution.repository.base import RepositoryBase

_USAGE_COLUMNS = (
    "sum(executions)::bigint AS executions, sum(prompt_tokens)::bigint AS prompt_tokens, "
    "sum(completion_tokens)::bigint AS completion_tokens, sum(total_tokens)::bigint AS total_tokens"
)
# group_by -> (the selected key columns, the GROUP BY and ORDER BY columns)
_USAGE_GROUPS = {
    "agent": ("agent_id, NULL::date AS day", "agent_id"),
    "day": ("NULL::uuid AS agent_id, day", "day"),
    "agent_day": ("agent_id, day", "day, agent_id"),
}


class LimitRows(RepositoryBase):
    """Tenant limits and the usage rollup (agent_usage_daily)."""

    def set_tenant_limit(self, tenant: str, max_concurrency: int | None) -> None:
        """Set a tenant's own concurrency limit (0: none), or remove it (None: the setting applies)."""
        params: dict[str, Any] = {"t": tenant, "n": max_concurrency}
        if max_concurrency is None:
            sql = "DELETE FROM tenant_limits WHERE tenant = %(t)s"
        else:
            sql = (
                "INSERT INTO tenant_limits (tenant, max_concurrency) VALUES (%(t)s, %(n)s) "
                "ON CONFLICT (tenant) DO UPDATE SET max_concurrency = EXCLUDED.max_concurrency"
            )
        with self._work(None, "set_tenant_limit") as work:
            work.connection.exec_driver_sql(sql, params)

    def tenant_slots(self, default_limit: int) -> Sequence[Any]:
        """Every tenant with a limit, executions holding slots or waiting for one: (tenant, limit,
        own (whether the limit is its own), held, waiting)."""
        sql = (
            "WITH t AS (SELECT tenant FROM tenant_limits UNION SELECT tenant FROM executions"
            " WHERE state IN ('RUNNING', 'PAUSING') OR waiting_reason = 'concurrency_limit')"
            " SELECT t.tenant, coalesce(l.max_concurrency, %(d)s) AS max_concurrency,"
            " l.tenant IS NOT NULL AS own,"
            " (SELECT count(*) FROM executions e WHERE e.tenant = t.tenant"
            "  AND e.state IN ('RUNNING', 'PAUSING')) AS held,"
            " (SELECT count(*) FROM executions e WHERE e.tenant = t.tenant AND e.state = 'QUEUED'"
            "  AND e.waiting_reason = 'concurrency_limit') AS waiting"
            " FROM t LEFT JOIN tenant_limits l ON l.tenant = t.tenant ORDER BY t.tenant"
        )
        with self._work(None, "tenant_slots") as work:
            return work.connection.exec_driver_sql(sql, {"d": default_limit}).all()

    def usage(
        self,
        tenant: str,
        group_by: str,
        *,
        after: date | None = None,
        before: date | None = None,
        agent_id: uuid.UUID | None = None,
        limit: int = 1000,
    ) -> Sequence[Any]:
        """Token usage of a tenant's agents from the daily rollup, grouped by agent, day or both:
        (agent_id, day, executions, prompt_tokens, completion_tokens, total_tokens)."""
        keys, group = _USAGE_GROUPS[group_by]
        where = ["tenant = %(t)s"]
        params: dict[str, Any] = {"t": tenant, "n": limit}
        if after is not None:
            where.append("day >= %(after)s")
            params["after"] = after
        if before is not None:
            where.append("day <= %(before)s")
            params["before"] = before
        if agent_id is not None:
            where.append("agent_id = %(a)s")
            params["a"] = agent_id
        sql = (
            f"SELECT {keys}, {_USAGE_COLUMNS} FROM agent_usage_daily WHERE {' AND '.join(where)}"
            f" GROUP BY {group} ORDER BY {group} LIMIT %(n)s"
        )
        with self._work(None, "usage") as work:
            return work.connection.exec_driver_sql(sql, params).all()
