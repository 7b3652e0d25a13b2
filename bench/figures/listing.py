"""GET /v1/executions with filters over many rows (generated in SQL): p50 and p99 per filter.

Rows: 10 agents, created_at spread over 30 days, a realistic state mix (85 % COMPLETED,
rare RUNNING and PENDING), a task_id on half of them (10 rows per task). Each filter of
DESIGN.md is asked through gunicorn (Procfile web line, an API key) one request at a
time on a keep-alive connection; the same filter through ExecutionRepository
(exact total and the capped total) is reported beside it.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import Ctx, make_agent, service
from bench.results import Figure, percentile

SPREAD_DAYS = 30
GENERATE = """
INSERT INTO executions (id, tenant, agent_id, task_id, parameters, state, progress_percentage,
    progress_message, context, result, attempt, max_retries, timeout_seconds, queue, priority, metadata,
    created_at, updated_at, queued_at, started_at, completed_at)
SELECT gen_random_uuid(), 'default', (CAST(:agents AS uuid[]))[1 + g % 10],
    CASE WHEN g % 2 = 0 THEN CAST(md5('task' || (g / 20)) AS uuid) END,
    '{"type": "standard", "input": "generated"}'::jsonb,
    CASE WHEN g % 100 < 85 THEN 'COMPLETED' WHEN g % 100 < 90 THEN 'FAILED'
         WHEN g % 100 < 93 THEN 'CANCELLED' WHEN g % 100 < 94 THEN 'TIMED_OUT'
         WHEN g % 100 < 96 THEN 'QUEUED' WHEN g % 100 < 98 THEN 'RUNNING'
         WHEN g % 100 < 99 THEN 'PENDING' ELSE 'PAUSED' END,
    100, 'Finalize', '{}'::jsonb, '{"output": "generated output"}'::jsonb, 1, 3, 3600, 'executions', 5,
    '{}'::jsonb, t, t, t, t, t + interval '1 second'
FROM generate_series(1, :rows) AS g,
     LATERAL (SELECT now() - make_interval(secs => g * :spread) AS t) AS c
"""


def task_uuid(k: int) -> uuid.UUID:
    """The task id the generator gives rows 20k .. 20k+19 (even ones)."""
    return uuid.UUID(hashlib.md5(f"task{k}".encode()).hexdigest())


def generate(svc: Any, rows: int) -> list[uuid.UUID]:
    """Insert `rows` executions in one SQL statement, then VACUUM ANALYZE; the agents' ids."""
    from sqlalchemy import text

    agents = [make_agent(svc, f"list{i}").id for i in range(10)]
    engine = svc.repository.session_factory.kw["bind"]
    with engine.begin() as conn:
        conn.execute(text(GENERATE), {"agents": agents, "rows": rows, "spread": SPREAD_DAYS * 86400 / rows})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE executions"))
    return agents


def filters(agents: list[uuid.UUID]) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, query parameters, has a goal) for every filter of DESIGN.md."""
    now = datetime.now(UTC)
    mid = now - timedelta(days=SPREAD_DAYS / 2)
    day = {
        "created_after": (mid - timedelta(hours=12)).isoformat(),
        "created_before": (mid + timedelta(hours=12)).isoformat(),
    }
    return [
        ("none", {}, True),
        ("state=COMPLETED", {"state": ["COMPLETED"]}, True),
        ("state=RUNNING", {"state": ["RUNNING"]}, True),
        ("state=FAILED,TIMED_OUT", {"state": ["FAILED", "TIMED_OUT"]}, True),
        ("agent_id", {"agent_id": str(agents[3])}, True),
        ("task_id", {"task_id": str(task_uuid(1234))}, True),
        ("created_after=1h", {"created_after": (now - timedelta(hours=1)).isoformat()}, True),
        ("created_window=1d", day, True),
        ("state+agent_id+window", {"state": ["COMPLETED"], "agent_id": str(agents[5])} | day, True),
        ("page_size=200", {"page_size": 200}, True),
        ("page=100", {"page": 100}, False),
    ]


def http_times(
    url: str, key: str, params: dict[str, Any], n: int, route: str = "/v1/executions"
) -> list[float]:
    """Milliseconds of `n` GETs of `route` with `params` on one keep-alive connection (3 warm-ups)."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    path = f"{route}?" + urllib.parse.urlencode(params, doseq=True)
    headers = {"Authorization": f"Bearer {key}"}
    times: list[float] = []
    try:
        for i in range(n + 3):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path} answered {resp.status}: {body[:300]!r}")
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return times


def _repo_times(svc: Any, params: dict[str, Any], n: int, capped: bool) -> list[float]:
    from app.schemas import ExecutionFilters, Pagination

    page = {k: params[k] for k in ("page", "page_size") if k in params}
    f = ExecutionFilters(**{k: v for k, v in params.items() if k not in ("page", "page_size")})
    p = Pagination(**page)
    times: list[float] = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        if capped:
            svc.repository.list_executions_page(f, p, tenant="default")
        else:
            svc.repository.list_executions(f, p, tenant="default")
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def run(ctx: Ctx) -> None:
    """Generate the rows, then p50/p99 of every filter (HTTP), with repository timings beside."""

    svc = service()
    rows, n = ctx.sizes["list_rows"], ctx.sizes["list_queries"]
    t0 = time.monotonic()
    agents = generate(svc, rows)
    ctx.state["listing_rows"] = rows  # the usage figure reuses them
    print(f"  generated {rows:,} rows in {time.monotonic() - t0:.0f} s", flush=True)
    key = ctx.state.get("api_key")
    if key is None:
        key, _ = svc.keys.create("default", "bench-list")
    web = ctx.env.start_web("web-list", env={"AUTH_ENABLED": "true", "RATE_LIMIT": "1000000000"})
    capped_available = hasattr(svc.repository, "list_executions_page")
    try:
        for label, params, has_goal in filters(agents):
            http_ms = http_times(web.info["url"], key, params, n)
            exact_ms = _repo_times(svc, params, max(n // 2, 10), capped=False)
            note = f"repository p99: exact total {percentile(exact_ms, 99):.1f} ms"
            if capped_available:
                capped_ms = _repo_times(svc, params, max(n // 2, 10), capped=True)
                note += f", capped total {percentile(capped_ms, 99):.1f} ms"
            ctx.add(Figure(f"list_executions_p50_ms[{label}]", percentile(http_ms, 50), "ms"))
            fig = Figure(
                f"list_executions_p99_ms[{label}]",
                percentile(http_ms, 99),
                "ms",
                goal="<= 50 ms" if has_goal else None,
                note=note,
            )
            if has_goal:
                fig.met = fig.value <= 50
            ctx.add(fig)
    finally:
        ctx.env.stop(web)
