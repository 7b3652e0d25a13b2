"""POST /v1/executions per second against a raw Flask endpoint under the same gunicorn.

Both apps run from the Procfile's web line (gthread, same workers and threads). The
load comes from a separate process (bench/loadgen.py: one keep-alive connection per
thread). The raw endpoint parses the JSON body, inserts one row and calls
`apply_async`; agentexec validates the body, authenticates the API key (the default
configuration; the per-key rate limit is set high enough never to refuse), creates the
execution (PENDING -> QUEUED in one transaction) and sends its Celery task. Neither
queue is consumed during the measurement, so no worker competes for the CPU. Rounds
alternate raw and ours.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.common import Ctx, make_agent, service
from bench.env import ROOT, SINK_QUEUE, CpuMeter, Proc, postgres_backends
from bench.results import Figure, median

BODY = {"parameters": {"type": "standard", "input": "benchmark input", "simulate": {"latency_ms": 0}}}


def load(url: str, body: str, ctx: Ctx, headers: list[str] | None = None) -> dict[str, Any]:
    """Run the load generator in its own process; its JSON result."""
    sizes = ctx.sizes
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        url,
        "--body",
        body,
        "--connections",
        str(sizes["http_connections"]),
        "--duration",
        str(sizes["http_duration"]),
        "--warmup",
        str(sizes["http_warmup"]),
    ]
    for h in headers or []:
        argv += ["--header", h]
    out = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=sizes["http_duration"] + sizes["http_warmup"] + 120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _meter(ctx: Ctx, web: Proc) -> CpuMeter:
    groups: dict[str, Any] = {"gunicorn": web.pid, "postgres": postgres_backends}
    redis_proc = next((p for p in ctx.env.procs if p.name == "redis"), None)
    if redis_proc is not None:
        groups["redis"] = redis_proc.pid
    return CpuMeter(groups)


def _cpu(used: dict[str, float], requests: int) -> str:
    parts = [f"{k} {1000 * v / max(requests, 1):.2f}" for k, v in used.items()]
    return ", ".join(parts)


def _check(result: dict[str, Any], what: str) -> None:
    if result["ok"] == 0 or result["errors"] > 0.01 * max(result["requests"], 1):
        raise RuntimeError(f"{what}: too many failed requests: {result['status']}")


def run(ctx: Ctx) -> None:
    """Alternate raw and ours under load; record the median requests per second and the ratio."""
    from sqlalchemy import text

    from bench.raw_flask import CREATE_TABLE

    svc = service()
    agent = make_agent(svc, "http")
    key, _ = svc.keys.create("default", "bench")
    with svc.repository.session_factory() as s:
        s.execute(text(CREATE_TABLE))
        s.commit()
    sink = {"DEFAULT_QUEUE": SINK_QUEUE, "CELERY_QUEUES": SINK_QUEUE, "BENCH_SINK_QUEUE": SINK_QUEUE}
    ours = ctx.env.start_web("web", env=sink | {"AUTH_ENABLED": "true", "RATE_LIMIT": "1000000000"})
    raw = ctx.env.start_web("web-raw", "bench.raw_flask:create_app()", env=sink)
    body = json.dumps(BODY | {"agent_id": str(agent.id)})
    auth = [f"Authorization: Bearer {key}"]
    raw_rps: list[float] = []
    our_rps: list[float] = []
    raw_res: list[dict[str, Any]] = []
    our_res: list[dict[str, Any]] = []
    raw_meter, our_meter = _meter(ctx, raw), _meter(ctx, ours)
    raw_cpu: dict[str, float] = {}
    our_cpu: dict[str, float] = {}
    try:
        for _ in range(ctx.sizes["http_rounds"]):
            raw_meter.start()
            r = load(raw.info["url"] + "/raw", body, ctx)
            _add(raw_cpu, raw_meter.stop())
            _check(r, "raw Flask")
            raw_rps.append(r["rps"])
            raw_res.append(r)
            ctx.env.purge(SINK_QUEUE)
            our_meter.start()
            with ctx.env.profiled(ours, "gunicorn-post"):
                o = load(ours.info["url"] + "/v1/executions", body, ctx, auth)
            _add(our_cpu, our_meter.stop())
            _check(o, "POST /v1/executions")
            our_rps.append(o["rps"])
            our_res.append(o)
            ctx.env.purge(SINK_QUEUE)
    finally:
        ctx.env.stop(raw)
        ctx.env.stop(ours)
    n_raw = sum(int(x["requests"]) for x in raw_res)
    n_ours = sum(int(x["requests"]) for x in our_res)
    fig = Figure(
        "post_executions_per_second",
        median(our_rps),
        "req/s",
        baseline=median(raw_rps),
        goal="ratio >= 0.8",
        note=(
            f"{ctx.sizes['http_connections']} keep-alive connections from a separate process, "
            f"{ctx.sizes['http_duration']:g} s per round; rounds raw {[round(x) for x in raw_rps]} "
            f"ours {[round(x) for x in our_rps]}; p50/p99 raw {raw_res[-1]['p50_ms']:.0f}/"
            f"{raw_res[-1]['p99_ms']:.0f} ms, "
            f"ours {our_res[-1]['p50_ms']:.0f}/{our_res[-1]['p99_ms']:.0f} ms; "
            f"load generator used {our_res[-1]['loadgen_cpu_fraction']:.0%} of a core\n"
            f"      CPU ms per request, raw: {_cpu(raw_cpu, n_raw)}\n"
            f"      CPU ms per request, ours: {_cpu(our_cpu, n_ours)}"
        ),
    )
    fig.met = fig.ratio is not None and fig.ratio >= 0.8
    ctx.add(fig)
    ctx.state["api_key"] = key


def _add(total: dict[str, float], used: dict[str, float]) -> None:
    for k, v in used.items():
        total[k] = total.get(k, 0.0) + v
