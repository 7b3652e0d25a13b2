"""N executions in flight at once on one worker host, each a 1 s simulated model call.

The ideal is N x 1 s / concurrency. Two measurements:
- drain (the goal): all N are QUEUED with their messages in the broker before the
  worker starts consuming (`add_consumer`); the clock runs from there to the last
  completion. This is the worker holding N executions in flight.
- end to end (reported): the same, but submitted while the worker consumes, so the
  submission rate of one producer process is included.
The worker's resident memory (all its processes) is sampled throughout.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import Ctx, count_in_state, create_request, make_agent, service
from bench.env import RUN_ID, redis_url, rss_mb
from bench.results import Figure

LATENCY_MS = 1000


class _RssSampler:
    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2)
        return self.peak


def _submit_all(svc: Any, agent_id: Any, n: int, queue: str, producers: int) -> None:
    request = create_request(agent_id, latency_ms=LATENCY_MS, queue=queue)
    with ThreadPoolExecutor(producers) as pool:
        list(pool.map(lambda _: svc.create_execution(request), range(n)))


def _wait_done(svc: Any, agent_id: Any, n: int, t0: float, timeout: float) -> float:
    while count_in_state(svc, agent_id, ("COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED")) < n:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("in-flight round did not finish")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    failed = n - count_in_state(svc, agent_id, ("COMPLETED",))
    if failed:
        raise RuntimeError(f"{failed} in-flight executions did not complete")
    return elapsed


def _timeline(svc: Any, agent_id: Any) -> str:
    """When executions started (after the first start) and how long each ran, from the database."""
    from sqlalchemy import text

    sql = text(
        "SELECT percentile_cont(ARRAY[0.5, 0.9, 1.0]) WITHIN GROUP (ORDER BY extract(epoch FROM "
        "  started_at - first)) AS starts, "
        "percentile_cont(ARRAY[0.5, 0.9, 1.0]) WITHIN GROUP (ORDER BY extract(epoch FROM "
        "  completed_at - started_at)) AS runs "
        "FROM executions, (SELECT min(started_at) AS first FROM executions WHERE agent_id = :a) f "
        "WHERE agent_id = :a"
    )
    with svc.repository.session_factory() as s:
        row = s.execute(sql, {"a": agent_id}).one()
    starts = "/".join(f"{x:.1f}" for x in row.starts)
    runs = "/".join(f"{x:.2f}" for x in row.runs)
    return f"started after the first start p50/p90/max {starts} s; each ran p50/p90/max {runs} s"


def raw_drain(ctx: Ctx, n: int, conc: int) -> float:
    """The same shape on raw Celery: n tasks sleeping 1 s in 10 chunks, queued first, then consumed."""
    import redis
    from celery import Celery

    from bench.raw_celery import sleep

    queue, counter = f"bench-raw-inflight-{RUN_ID}", f"bench-raw-inflight-count-{RUN_ID}"
    client = redis.Redis.from_url(redis_url())
    client.delete(counter)
    worker = ctx.env.start_worker(
        "raw-inflight", app="bench.raw_celery", queue=f"bench-raw-idle-{RUN_ID}", concurrency=conc
    )
    control = Celery(broker=redis_url())
    try:
        for _ in range(n):
            sleep.apply_async(args=[LATENCY_MS / 1000, 10, counter], queue=queue)
        t0 = time.monotonic()
        control.control.add_consumer(queue, destination=[worker.info["node"]], reply=True, timeout=5)
        while int(client.get(counter) or 0) < n:
            if time.monotonic() - t0 > 300:
                raise TimeoutError("raw in-flight round did not finish")
            time.sleep(0.02)
        return time.monotonic() - t0
    finally:
        control.close()
        client.close()
        ctx.env.stop(worker)


def split_drain(ctx: Ctx, svc: Any, n: int, conc: int, processes: int = 2) -> tuple[float, str, float]:
    """The drain with the same total concurrency split over `processes` worker processes on this host:
    (seconds, timeline, peak RSS of all of them)."""
    from celery import Celery

    queue = f"bench-inflight-split-{RUN_ID}"
    idle = f"bench-idle-{RUN_ID}"
    workers = [
        ctx.env.start_worker(f"inflight-{i}", queue=idle, concurrency=conc // processes)
        for i in range(processes)
    ]
    control = Celery(broker=redis_url())
    try:
        agent = make_agent(svc, "inflight-split")
        _submit_all(svc, agent.id, n, queue, ctx.sizes["producers"])
        samplers = [_RssSampler(w.pid) for w in workers]
        t0 = time.monotonic()
        control.control.add_consumer(
            queue, destination=[w.info["node"] for w in workers], reply=True, timeout=5
        )
        elapsed = _wait_done(svc, agent.id, n, t0, timeout=max(120, 20 * n / conc))
        peak = sum(s.stop() for s in samplers)
        return elapsed, _timeline(svc, agent.id), peak
    finally:
        control.close()
        for w in workers:
            ctx.env.stop(w)


def run(ctx: Ctx) -> None:
    """Start a worker with concurrency >= 200, measure drain and end to end, report RSS."""
    from celery import Celery

    n, conc = ctx.sizes["inflight"], ctx.sizes["inflight_concurrency"]
    ideal = n * LATENCY_MS / 1000 / conc
    svc = service()
    queue = f"bench-inflight-{RUN_ID}"
    worker = ctx.env.start_worker("inflight", queue=f"bench-idle-{RUN_ID}", concurrency=conc)
    control = Celery(broker=redis_url())
    try:
        idle_rss = rss_mb(worker.pid)
        agent = make_agent(svc, "inflight")
        t_sub = time.monotonic()
        _submit_all(svc, agent.id, n, queue, ctx.sizes["producers"])
        submit_s = time.monotonic() - t_sub
        sampler = _RssSampler(worker.pid)
        with ctx.env.profiled(worker, "worker-inflight"):
            t0 = time.monotonic()
            control.control.add_consumer(queue, destination=[worker.info["node"]], reply=True, timeout=5)
            drain = _wait_done(svc, agent.id, n, t0, timeout=max(120, 20 * ideal))
        peak = sampler.stop()
        drain_timeline = _timeline(svc, agent.id)

        agent2 = make_agent(svc, "inflight-e2e")
        sampler = _RssSampler(worker.pid)
        t0 = time.monotonic()
        _submit_all(svc, agent2.id, n, queue, ctx.sizes["producers"])
        e2e = _wait_done(svc, agent2.id, n, t0, timeout=max(120, 20 * ideal))
        peak = max(peak, sampler.stop())
        e2e_timeline = _timeline(svc, agent2.id)
    finally:
        control.close()
        ctx.env.stop(worker)
    raw = raw_drain(ctx, n, conc)
    split, split_timeline, split_rss = split_drain(ctx, svc, n, conc)
    fig = Figure(
        f"inflight_{n}_drain_seconds",
        drain,
        "s",
        baseline=ideal,
        goal="ratio <= 1.5",
        note=f"{n} x {LATENCY_MS} ms at concurrency {conc} (threads); all {n} queued first "
        f"(submitting took {submit_s:.1f} s), then add_consumer; {drain_timeline}",
    )
    fig.met = fig.ratio is not None and fig.ratio <= 1.5
    ctx.add(fig)
    ctx.add(
        Figure(
            f"inflight_{n}_raw_celery_drain_seconds",
            raw,
            "s",
            baseline=ideal,
            note="the same shape on raw Celery (a task sleeping 1 s in 10 chunks), same pool and "
            "concurrency: the floor the engine beneath sets",
        )
    )
    ctx.add(
        Figure(
            f"inflight_{n}_drain_2x{conc // 2}_seconds",
            split,
            "s",
            baseline=ideal,
            note=f"the same concurrency as 2 worker processes of {conc // 2} threads on this host "
            f"(peak RSS of both {split_rss:.0f} MB); {split_timeline}",
        )
    )
    ctx.add(
        Figure(
            f"inflight_{n}_end_to_end_seconds",
            e2e,
            "s",
            baseline=ideal,
            note=f"submitted by {ctx.sizes['producers']} producer threads while the worker consumes; "
            f"{e2e_timeline}",
        )
    )
    ctx.add(
        Figure(
            "inflight_worker_rss_mb",
            peak,
            "MB",
            note=f"peak resident memory of the worker (idle: {idle_rss:.0f} MB)",
        )
    )
