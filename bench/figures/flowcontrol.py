"""Flow control (#15): the slot hand-over delay of a concurrency limit, and GET /v1/usage.

Hand-over: an agent with max_concurrency=1 gets N short executions at once; one runs, the
others wait (waiting_reason concurrency_limit). Each end gives the slot back and wakes the
next waiter. The delay is, per pair, the next execution's claim (started_at, the moment the
claim took the row) minus the end of the one before (completed_at), both stamped by
PostgreSQL; a pair that overlaps would mean two held the one slot. Baseline, in the same run: an
execution sent to an idle worker, created -> claimed (started_at - created_at), unlimited.

Usage: `list_rows` executions are generated in SQL (the listing figure's generator) and the
daily rollup built from them as the workers would have; GET /v1/usage is asked through
gunicorn grouped by agent and by day over the whole range and over one week.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import env as bench_env
from bench.common import Ctx, make_agent, service
from bench.figures.listing import generate, http_times
from bench.results import Figure, percentile

# Each execution's usage lands in shard hashtext(id) & 15 of its agent's day, as the writer puts
# it: the query reads the 16 shard rows per agent and day that a real deployment holds.
ROLLUP = """
INSERT INTO agent_usage_daily
    (agent_id, day, tenant, shard, executions, prompt_tokens, completion_tokens, total_tokens)
SELECT agent_id, (created_at AT TIME ZONE 'UTC')::date, tenant, hashtext(id::text) & 15, count(*),
       count(*) * 40, count(*) * 60, count(*) * 100
FROM executions GROUP BY 1, 2, 3, 4
ON CONFLICT (agent_id, day, shard) DO UPDATE SET executions = EXCLUDED.executions,
    prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,
    total_tokens = EXCLUDED.total_tokens
"""


def _wait_finished(svc: Any, ids: list[uuid.UUID], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [svc.get_execution(i) for i in ids]
        if all(r.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") for r in rows):
            return rows
        if time.monotonic() > deadline:
            states = sorted({r.state for r in rows})
            raise RuntimeError(f"executions did not finish in {timeout:.0f} s: {states}")
        time.sleep(0.05)


def _handover(ctx: Ctx) -> None:
    from app.schemas import AgentUpdate, ExecutionCreate

    svc = service()
    n = 30 if ctx.mode == "short" else 200
    worker = ctx.env.start_worker("flow", queue=bench_env.QUEUE, concurrency=8)
    try:
        # Baseline: one at a time to an idle worker, no limit.
        free = make_agent(svc, "flow-free")
        base: list[float] = []
        for i in range(max(n // 3, 10)):
            ex = svc.create_execution(ExecutionCreate(agent_id=free.id, parameters={"input": f"b{i}"}))[0]
            [row] = _wait_finished(svc, [ex.id], 30)
            base.append((row.started_at - row.created_at).total_seconds() * 1000)
        capped = svc.update_agent(make_agent(svc, "flow-capped").id, AgentUpdate(max_concurrency=1))
        assert isinstance(capped.max_concurrency, int)
        params = {"input": "x", "simulate": {"latency_ms": 20, "chunks": 1}}
        ids = [
            svc.create_execution(ExecutionCreate(agent_id=capped.id, parameters=params))[0].id
            for _ in range(n)
        ]
        rows = sorted(_wait_finished(svc, ids, 30 + n), key=lambda r: r.started_at)
        overlap = sum(1 for a, b in zip(rows, rows[1:], strict=False) if b.started_at < a.completed_at)
        delays = [
            (b.started_at - a.completed_at).total_seconds() * 1000
            for a, b in zip(rows, rows[1:], strict=False)
        ]
    finally:
        ctx.env.stop(worker)
    note = f"{n} executions of 20 ms on max_concurrency=1; {overlap} overlapped (must be 0)"
    fig = Figure(
        "slot_handover_p50_ms",
        percentile(delays, 50),
        "ms",
        baseline=percentile(base, 50),
        goal="<= 20 ms",
        note=note + "; baseline: created -> claimed on an idle worker, no limit",
    )
    fig.met = fig.value <= 20 and overlap == 0
    ctx.add(fig)
    ctx.add(Figure("slot_handover_p99_ms", percentile(delays, 99), "ms", baseline=percentile(base, 99)))


def _usage(ctx: Ctx) -> None:
    from sqlalchemy import text

    svc = service()
    rows, n = ctx.sizes["list_rows"], ctx.sizes["list_queries"]
    if not ctx.state.get("listing_rows"):
        t0 = time.monotonic()
        generate(svc, rows)
        print(f"  generated {rows:,} rows in {time.monotonic() - t0:.0f} s", flush=True)
    engine = svc.repository.session_factory.kw["bind"]
    with engine.begin() as conn:
        conn.execute(text(ROLLUP))
        total, shards = conn.execute(text("SELECT sum(executions), count(*) FROM agent_usage_daily")).one()
    key = ctx.state.get("api_key")
    if key is None:
        key, _ = svc.keys.create("default", "bench-usage")
    week = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    asks = [
        ("group_by=agent", {"group_by": "agent"}),
        ("group_by=day", {"group_by": "day"}),
        ("group_by=day,7d", {"group_by": "day", "created_after": week}),
    ]
    web = ctx.env.start_web("web-usage", env={"AUTH_ENABLED": "true", "RATE_LIMIT": "1000000000"})
    try:
        for label, params in asks:
            times = http_times(web.info["url"], key, params, n, route="/v1/usage")
            fig = Figure(
                f"usage_p99_ms[{label}]",
                percentile(times, 99),
                "ms",
                goal="<= 50 ms",
                note=f"p50 {percentile(times, 50):.1f} ms over {int(total):,} executions"
                f" ({shards:,} rollup rows)",
            )
            fig.met = fig.value <= 50
            ctx.add(fig)
    finally:
        ctx.env.stop(web)


def run(ctx: Ctx) -> None:
    """The hand-over delay against a fresh dispatch, then the usage query."""
    _handover(ctx)
    _usage(ctx)
