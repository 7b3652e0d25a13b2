"""Executions per second end to end against raw Celery no-op tasks per second.

Both workers run the Procfile's worker line (threads pool, default concurrency). A pool
of producer threads in this process submits as fast as it can (raw: `apply_async` of a
no-op; ours: `create_execution` of a standard task on the simulated model, 0 ms) while
the worker drains; the clock runs from the first submit to the last completion. Rounds
alternate raw and ours so drift on a shared machine hits both alike.

The same rounds give `cpu_ms_per_execution`: user+system CPU (from /proc) of every process
taking part — this producer process, the worker, the PostgreSQL backends of the benchmark
database, the run's redis-server — summed and divided by the executions (raw: tasks).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import Ctx, count_in_state, create_request, make_agent, service
from bench.env import RAW_QUEUE, RUN_ID, CpuMeter, postgres_backends, redis_url
from bench.results import Figure, median


def raw_round(n: int, producers: int, tag: str) -> tuple[float, float]:
    """(tasks per second end to end, submit-only rate) of n raw no-op tasks."""
    import redis

    from bench.raw_celery import noop

    client = redis.Redis.from_url(redis_url())
    counter = f"bench-count-{RUN_ID}-{tag}"
    client.delete(counter)
    t0 = time.monotonic()
    with ThreadPoolExecutor(producers) as pool:
        list(pool.map(lambda _: noop.apply_async(args=[counter], queue=RAW_QUEUE), range(n)))
    t_sent = time.monotonic()
    while int(client.get(counter) or 0) < n:
        if time.monotonic() - t0 > 120 + n / 20:
            raise TimeoutError("raw Celery round did not finish")
        time.sleep(0.005)
    elapsed = time.monotonic() - t0
    client.delete(counter)
    client.close()
    return n / elapsed, n / (t_sent - t0)


def ours_round(svc: Any, n: int, producers: int) -> tuple[float, float]:
    """(executions per second end to end, submit-only rate) of n standard executions."""
    agent = make_agent(svc, "throughput")
    request = create_request(agent.id)
    t0 = time.monotonic()
    with ThreadPoolExecutor(producers) as pool:
        list(pool.map(lambda _: svc.create_execution(request), range(n)))
    t_sent = time.monotonic()
    while count_in_state(svc, agent.id, ("COMPLETED", "FAILED")) < n:
        if time.monotonic() - t0 > 120 + n / 20:
            raise TimeoutError("agentexec round did not finish")
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    failed = count_in_state(svc, agent.id, ("FAILED",))
    if failed:
        raise RuntimeError(f"{failed} executions FAILED during the throughput round")
    return n / elapsed, n / (t_sent - t0)


def _meter(ctx: Ctx, worker_pid: int) -> CpuMeter:
    groups: dict[str, Any] = {
        "producer": lambda: [os.getpid()],
        "worker": worker_pid,
        "postgres": postgres_backends,
    }
    redis_proc = next((p for p in ctx.env.procs if p.name == "redis"), None)
    if redis_proc is not None:
        groups["redis"] = redis_proc.pid
    return CpuMeter(groups)


def cpu_figures(
    ctx: Ctx, our_cpu: dict[str, float], n_ours: int, raw_cpu: dict[str, float], n_raw: int
) -> None:
    """`cpu_ms_per_execution`, ours against raw Celery (goal: ratio <= 2), then its split by part.

    `*_cpu` are CPU seconds per part (producer, worker, postgres, redis) summed over the
    rounds; `n_*` how many executions (raw: tasks) those rounds ran.
    """
    ours = {part: 1000 * sec / n_ours for part, sec in our_cpu.items()}
    raw = {part: 1000 * sec / n_raw for part, sec in raw_cpu.items()}
    unmeasured = "" if "redis" in ours else "; Redis not measured (a shared Redis: BENCH_REDIS_URL)"
    fig = Figure(
        "cpu_ms_per_execution",
        sum(ours.values()),
        "ms",
        baseline=sum(raw.values()),
        goal="ratio <= 2",
        note=f"user+system CPU of {', '.join(ours)} during the throughput rounds per execution "
        f"({n_ours}); baseline per raw Celery no-op task ({n_raw}), same pool{unmeasured}",
    )
    fig.met = fig.ratio is not None and fig.ratio <= 2
    ctx.add(fig)
    for part, ms in ours.items():
        ctx.add(Figure(f"cpu_ms_per_execution_{part}", ms, "ms", baseline=raw.get(part)))


def run(ctx: Ctx) -> None:
    """Alternate rounds of raw and ours; the medians, their ratio; CPU per execution of each."""
    svc = service()
    raw_worker, our_worker = ctx.state["raw_worker"], ctx.state["our_worker"]
    sizes = ctx.sizes
    producers = sizes["producers"]
    raw_round(100, producers, "warmup")
    ours_round(svc, 50, producers)
    raw_rates, our_rates, raw_submit, our_submit = [], [], [], []
    raw_meter, our_meter = _meter(ctx, raw_worker.pid), _meter(ctx, our_worker.pid)
    raw_cpu: dict[str, float] = {}
    our_cpu: dict[str, float] = {}
    for r in range(sizes["throughput_rounds"]):
        raw_meter.start()
        rate, submit = raw_round(sizes["throughput_raw"], producers, str(r))
        for k, v in raw_meter.stop().items():
            raw_cpu[k] = raw_cpu.get(k, 0.0) + v
        raw_rates.append(rate)
        raw_submit.append(submit)
        our_meter.start()
        with ctx.env.profiled(our_worker, f"worker-throughput-{r}"):
            rate, submit = ours_round(svc, sizes["throughput_ours"], producers)
        for k, v in our_meter.stop().items():
            our_cpu[k] = our_cpu.get(k, 0.0) + v
        our_rates.append(rate)
        our_submit.append(submit)
    rounds = sizes["throughput_rounds"]
    ours, raw = median(our_rates), median(raw_rates)
    fig = Figure(
        "executions_per_second",
        ours,
        "exec/s",
        baseline=raw,
        goal="ratio >= 0.5",
        note=(
            f"rounds raw {[round(x) for x in raw_rates]} ours {[round(x) for x in our_rates]}; "
            f"submit-only raw {median(raw_submit):.0f}/s ours {median(our_submit):.0f}/s "
            f"({producers} producer threads); CPU per execution: cpu_ms_per_execution"
        ),
    )
    fig.met = fig.ratio is not None and fig.ratio >= 0.5
    ctx.add(fig)
    cpu_figures(ctx, our_cpu, rounds * sizes["throughput_ours"], raw_cpu, rounds * sizes["throughput_raw"])
    ctx.state["throughput_cpu"] = {"raw": raw_cpu, "ours": our_cpu}
