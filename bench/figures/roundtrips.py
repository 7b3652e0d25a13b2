"""Database round trips per execution, counted on the wire by a proxy in front of PostgreSQL.

A worker (the Procfile's line) and an in-process service both reach PostgreSQL through
their own CountingProxy; executions run one at a time, after a warm-up, and the deltas
are divided by their number. Waiting uses Redis events, so it adds no database traffic.
"""

from __future__ import annotations

from collections import Counter

from bench.common import Ctx, StateWatcher, create_request, make_agent
from bench.env import RUN_ID, database_url, redis_url
from bench.pgproxy import CountingProxy
from bench.results import Figure

KEYS = ("round_trips", "statements", "begin", "commit", "rollback", "ping", "autocommit")


def _per(delta: Counter[str], n: int) -> dict[str, float]:
    return {k: delta.get(k, 0) / n for k in KEYS}


def _fmt(per: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in per.items() if k != "round_trips")


def measure(ctx: Ctx, n: int, warmup: int = 40) -> tuple[dict[str, float], dict[str, float]]:
    """(submit side, worker side) counters per execution."""
    from app.bootstrap import build_service
    from app.config import Settings
    from app.db import get_engine, make_session_factory
    from workers.background import BackgroundTaskManager
    from workers.celery_app import celery_app

    worker_proxy, submit_proxy = CountingProxy(), CountingProxy()
    queue = f"bench-rt-{RUN_ID}"
    worker = ctx.env.start_worker(
        "roundtrips", queue=queue, env={"DATABASE_URL": database_url(port=worker_proxy.port)}
    )
    url = database_url(port=submit_proxy.port)
    settings = Settings(database_url=url)
    svc = build_service(
        background_tasks=lambda hub: BackgroundTaskManager(celery_app, hub),
        settings=settings,
        session_factory=make_session_factory(get_engine(url)),
    )
    watcher = StateWatcher(redis_url())
    try:
        agent = make_agent(svc, "roundtrips")
        before_w = before_s = Counter[str]()
        for i in range(warmup + n):
            if i == warmup:
                before_w, before_s = worker_proxy.snapshot(), submit_proxy.snapshot()
            ex, _ = svc.create_execution(create_request(agent.id, queue=queue))
            watcher.wait(ex.id, "COMPLETED", timeout=30)
        after_w, after_s = worker_proxy.snapshot(), submit_proxy.snapshot()
    finally:
        watcher.close()
        ctx.env.stop(worker)
        worker_proxy.close()
        submit_proxy.close()
    return _per(after_s - before_s, n), _per(after_w - before_w, n)


def run(ctx: Ctx) -> None:
    """Print and record round trips and transactions per execution, submit and worker side."""
    n = ctx.sizes["roundtrip_executions"]
    submit, worker = measure(ctx, n)
    ctx.state["round_trips"] = {"submit": submit, "worker": worker}
    ctx.add(
        Figure(
            "db_round_trips_per_execution_submit",
            submit["round_trips"],
            "round trips",
            note=f"create_execution, standard task, {n} executions: {_fmt(submit)}",
        )
    )
    ctx.add(
        Figure(
            "db_round_trips_per_execution_worker",
            worker["round_trips"],
            "round trips",
            note=f"claim -> COMPLETED on the worker: {_fmt(worker)}",
        )
    )
    tx_submit = submit["commit"] + submit["autocommit"]
    tx_worker = worker["commit"] + worker["autocommit"]
    ctx.add(
        Figure(
            "db_transactions_per_execution",
            tx_submit + tx_worker,
            "transactions",
            note=f"submit {tx_submit:.1f} + worker {tx_worker:.1f} "
            f"(COMMITs and autocommit statements; reads count too)",
        )
    )
