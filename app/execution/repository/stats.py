"""The SQL of the scrape-time execution figures (app.metrics renders them).

Each histogram is one scan with a FILTER per bucket. The bucket bounds are constants
of this module, rendered into the SQL once at import; no caller value reaches it.
"""

from __future__ import annotations

from collections.abc import Sequence

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _bucket_columns(expr: str, buckets: Sequence[float], weight: str = "1") -> str:
    return ", ".join(
        f"coalesce(sum({weight}) FILTER (WHERE {expr} <= {float(b)!r}), 0) AS b{i}"
        for i, b in enumerate(buckets)
    )


def _histogram_sql(
    source: str,
    expr: str,
    buckets: Sequence[float],
    *,
    label: str = "''",
    weight: str = "1",
    total: str | None = None,
) -> str:
    return (
        f"SELECT {label} AS label, coalesce(sum({weight}), 0) AS n, coalesce(sum({total or expr}), 0) AS s, "
        f"{_bucket_columns(expr, buckets, weight)} FROM ({source}) t GROUP BY 1"
    )


_NUMBER = (
    "CASE WHEN jsonb_typeof(result->'usage'->'{key}') = 'number'"
    " THEN (result->'usage'->>'{key}')::numeric END"
)
_CALLS = _NUMBER.format(key="model_calls")
STATS_QUERIES = {
    "reaper": (
        "SELECT extract(epoch FROM now() - last_pass_at)::float8, recovered, passes FROM reaper_status"
    ),
    "retention": "SELECT extract(epoch FROM now() - last_run_at)::float8, deleted FROM retention_status",
    "periodic": "SELECT task, extract(epoch FROM now() - last_run_at)::float8, runs FROM periodic_status",
    "webhook_deliveries": "SELECT status, count(*) FROM webhook_deliveries GROUP BY status",
    "webhooks_disabled": "SELECT count(*) FROM webhooks WHERE NOT enabled",
    "by_state": "SELECT state, count(*) FROM executions GROUP BY state",
    "transitions": (
        "SELECT coalesce(from_state, ''), to_state, count(*) FROM execution_state_history GROUP BY 1, 2"
    ),
    "duration": _histogram_sql(
        "SELECT state, extract(epoch FROM completed_at - started_at)::float8 AS d FROM executions "
        "WHERE completed_at IS NOT NULL AND started_at IS NOT NULL AND completed_at >= started_at",
        "d",
        DURATION_BUCKETS,
        label="state",
    ),
    "queue_wait": _histogram_sql(
        "SELECT extract(epoch FROM created_at - prev_at)::float8 AS w FROM ("
        " SELECT to_state, created_at,"
        " lag(created_at) OVER (PARTITION BY execution_id ORDER BY id) AS prev_at,"
        " lag(to_state) OVER (PARTITION BY execution_id ORDER BY id) AS prev_state"
        " FROM execution_state_history WHERE to_state IN ('QUEUED', 'RUNNING')) h"
        " WHERE to_state = 'RUNNING' AND prev_state = 'QUEUED'",
        "w",
        DURATION_BUCKETS,
    ),
    "model_call": _histogram_sql(
        f"SELECT calls, extract(epoch FROM completed_at - started_at)::float8 AS d,"
        f" extract(epoch FROM completed_at - started_at)::float8 / calls AS per_call FROM ("
        f" SELECT {_CALLS} AS calls, completed_at, started_at FROM executions"
        f" WHERE state = 'COMPLETED' AND attempt = 1 AND started_at IS NOT NULL"
        f" AND completed_at >= started_at) c WHERE calls > 0",
        "per_call",
        MODEL_BUCKETS,
        weight="calls",
        total="d",
    ),
    "tokens": (
        "SELECT coalesce(sum(" + _NUMBER.format(key="prompt_tokens") + "), 0),"
        " coalesce(sum(" + _NUMBER.format(key="completion_tokens") + "), 0),"
        " coalesce(sum(" + _CALLS + "), 0)"
        " FROM executions WHERE state = 'COMPLETED' AND result IS NOT NULL"
    ),
}
