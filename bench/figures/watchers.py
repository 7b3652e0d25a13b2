"""`sse_watchers_<N>`: the API with N open SSE streams, against itself without them, same run.

gunicorn from the Procfile's web line (api.server.GeventWorker, 2 workers). A separate
process (bench/watchers.py) holds N streams, 10 per execution over N/10 PENDING
executions, all from one key (MAX_STREAMS_PER_KEY raised above N for the run). Then:

- memory per idle stream: the gunicorn workers' summed RSS with the N streams open and
  idle, minus the same before they were opened (after the no-watchers load), over N;
- event latency: this process drives `DRIVEN` of the watched executions (QUEUED,
  RUNNING, `PROGRESS` progress updates at `PACE`, COMPLETED) through a TimingBus that
  stamps each event when the committed events are handed over for publishing; the holder
  stamps each frame on arrival: latency = arrival - commit, over every watcher of every
  event (10 per event);
- GET /v1/executions/{id}: sequential requests from this process, p99, with and without;
- POST /v1/executions: bench/loadgen.py as in `http` (64 keep-alive connections), the
  requests per second with the streams open over the same without them (measured first).
"""

from __future__ import annotations

import json
import math
import os
import queue as queue_mod
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Ctx, make_agent, service
from bench.env import LOG_DIR, ROOT, SINK_QUEUE, CpuMeter, Proc, postgres_backends
from bench.figures.http import BODY, load
from bench.figures.sse import _timing_bus
from bench.results import Figure, percentile

PER_EXECUTION = int(os.environ.get("BENCH_PER_EXECUTION", 10))
DRIVEN = int(os.environ.get("BENCH_DRIVEN", 10))
PROGRESS = 20
PACE = 0.1
GETS = 300
IDLE_SECONDS = 10.0
SIZES = {"short": 1000, "full": 10_000}


def worker_rss_kb(web: Proc) -> int:
    """The summed VmRSS of the gunicorn master's children (its workers)."""
    total = 0
    children = Path(f"/proc/{web.pid}/task/{web.pid}/children").read_text().split()
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def get_p99(url: str, key: str, execution_id: Any) -> float:
    """p99 (ms) of GETs of one execution, one at a time on a keep-alive connection."""
    import httpx

    times: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        for _ in range(GETS):
            started = time.perf_counter()
            resp = c.get(f"/v1/executions/{execution_id}")
            times.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 200:
                raise RuntimeError(f"GET answered {resp.status_code}: {resp.text[:200]}")
    return percentile(times, 99)


class Holder:
    """The stream-holding process and its output lines."""

    def __init__(self, port: int, key: str, paths: list[str]):
        paths_file = LOG_DIR / "watcher-paths.json"
        paths_file.write_text(json.dumps(paths))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.watchers",
                "--port",
                str(port),
                "--key",
                key,
                "--paths",
                str(paths_file),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(LOG_DIR / "watchers.log").open("wb"),
            text=True,
        )
        self.lines: queue_mod.Queue[str] = queue_mod.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def ready(self, timeout: float) -> tuple[int, int]:
        line = self.lines.get(timeout=timeout)
        if not line.startswith("READY"):
            raise RuntimeError(f"the stream holder did not start: {line}")
        _, held, refused = line.split()
        return int(held), int(refused)

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("REPORT\n")
        self.proc.stdin.flush()
        out: dict[str, Any] = json.loads(self.lines.get(timeout=60))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("EXIT\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


def drive(n: int) -> tuple[Any, list[Any], dict[int, float]]:
    """A service whose bus stamps commits, and `n` PENDING executions to watch."""
    from app.bootstrap import build_service
    from app.schemas import ExecutionCreate

    bus = _timing_bus()
    svc = build_service(background_tasks=None, event_bus=bus)
    agent = make_agent(svc, "watchers")
    executions = [
        svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False))[0]
        for _ in range(n)
    ]
    return svc, executions, bus.committed


def run_events(svc: Any, executions: list[Any]) -> None:
    """QUEUED, RUNNING, progress updates and COMPLETED on each driven execution, interleaved."""
    from app.schemas import ExecutionProgressUpdate
    from app.schemas import ExecutionState as S

    for ex in executions:
        svc.start_execution(ex.id)
        svc.state_manager.change_state(ex.id, S.RUNNING, "bench", expected_state=S.QUEUED)
    for i in range(PROGRESS):
        for ex in executions:
            svc.progress_tracker.update_progress(
                ex.id, ExecutionProgressUpdate(percentage=90 * i / PROGRESS, message=f"step {i}")
            )
        time.sleep(PACE)
    for ex in executions:
        svc.state_manager.change_state(ex.id, S.COMPLETED, "bench", values={"result": {"output": "done"}})


def run(ctx: Ctx) -> None:
    """Without watchers first (POST rate, GET p99, RSS), then with N streams open."""
    n = int(os.environ.get("BENCH_WATCHERS") or SIZES[ctx.mode])
    name = f"sse_watchers_{n}"
    svc0 = service()
    key, _ = svc0.keys.create("default", "bench-watchers")
    agent = make_agent(svc0, "watchers-post")
    sink = {"DEFAULT_QUEUE": SINK_QUEUE, "CELERY_QUEUES": SINK_QUEUE, "BENCH_SINK_QUEUE": SINK_QUEUE}
    env = sink | {"AUTH_ENABLED": "true", "RATE_LIMIT": "1000000000", "MAX_STREAMS_PER_KEY": str(n + 100)}
    # The server model to measure: the Procfile's (gevent) unless the environment names another,
    # e.g. WEB_WORKER_CLASS=api.server.ThreadWorker WEB_THREADS=600 (one thread per stream).
    env |= {
        k: os.environ[k]
        for k in ("WEB_WORKER_CLASS", "WEB_THREADS", "WEB_WORKERS", "WEB_GC_LOG")
        if k in os.environ
    }
    svc, executions, committed = drive(n // PER_EXECUTION)
    web = ctx.env.start_web("web-watchers", env=env)
    url, port = web.info["url"], web.info["port"]
    body = json.dumps(BODY | {"agent_id": str(agent.id)})
    auth = [f"Authorization: Bearer {key}"]
    holder: Holder | None = None
    try:
        post_meter = CpuMeter({"gunicorn": web.pid})
        post_meter.start()
        alone = load(url + "/v1/executions", body, ctx, auth)
        cpu_alone = post_meter.stop()["gunicorn"]
        ctx.env.purge(SINK_QUEUE)
        get_alone = get_p99(url, key, executions[0].id)
        rss_before = worker_rss_kb(web)

        paths = [f"/v1/executions/{ex.id}/events" for ex in executions for _ in range(PER_EXECUTION)]
        opened = time.monotonic()
        holder = Holder(port, key, paths)
        held, refused = holder.ready(timeout=600)
        open_seconds = time.monotonic() - opened
        time.sleep(2)  # every stream has replayed and waits: measure them idle
        rss_with = worker_rss_kb(web)
        meter = CpuMeter({"gunicorn": web.pid, "postgres": postgres_backends})
        meter.start()
        time.sleep(IDLE_SECONDS)
        idle_cpu = meter.stop()
        per_stream_kb = (rss_with - rss_before) / max(held, 1)

        get_with = get_p99(url, key, executions[0].id)
        first = max(committed, default=0)
        run_events(svc, executions[-DRIVEN:])
        sent = {i: t for i, t in committed.items() if i > first}
        expected = len(sent) * PER_EXECUTION
        latencies: list[float] = []
        deadline = time.monotonic() + 30
        while len(latencies) < expected and time.monotonic() < deadline:  # the last frames arrive
            time.sleep(0.5)
            frames = holder.report()["frames"]
            latencies += [
                (at - sent[int(i)]) * 1000 for i, ts in frames.items() if int(i) in sent for at in ts
            ]
        post_meter.start()
        with_watchers = load(url + "/v1/executions", body, ctx, auth)
        cpu_with = post_meter.stop()["gunicorn"]
        ctx.env.purge(SINK_QUEUE)
        still_open = holder.report()["open"]
    finally:
        if holder is not None:
            holder.close()
        ctx.env.stop(web)
        if svc.control_hub is not None:
            svc.control_hub.stop()

    missing = expected - len(latencies)
    span = ctx.sizes["http_duration"] + ctx.sizes["http_warmup"]
    latencies += [math.inf] * missing  # a frame that never came counts as infinitely late
    note = (
        f"{held} streams held ({refused} refused, {still_open} still open at the end; opened in "
        f"{open_seconds:.0f} s), {PER_EXECUTION} per execution, one key; {missing} of {expected} frames not "
        f"received within 30 s; gunicorn Procfile web line"
    )
    fig = Figure(f"{name}_event_p99_ms", percentile(latencies, 99), "ms", goal="<= 100 ms", note=note)
    fig.met = held == n and fig.value <= 100
    ctx.add(fig)
    ctx.add(
        Figure(
            f"{name}_event_p50_ms",
            percentile(latencies, 50),
            "ms",
            note=f"{len(latencies)} frames: {len(sent)} events x {PER_EXECUTION} watchers",
        )
    )
    fig = Figure(f"{name}_get_p99_ms", get_with, "ms", baseline=get_alone, goal="<= 50 ms")
    fig.met = get_with <= 50
    ctx.add(fig)
    fig = Figure(
        f"{name}_post_per_second",
        with_watchers["rps"],
        "req/s",
        baseline=alone["rps"],
        goal="ratio >= 0.8",
        note="baseline: the same server and load before the streams were opened; gunicorn CPU per "
        f"request {1000 * cpu_with / max(with_watchers['rps'] * span, 1):.2f} ms with the streams, "
        f"{1000 * cpu_alone / max(alone['rps'] * span, 1):.2f} ms without (warm-up included)",
    )
    fig.met = (fig.ratio or 0) >= 0.8
    ctx.add(fig)
    fig = Figure(
        f"{name}_memory_per_stream_kb",
        per_stream_kb,
        "KB",
        goal="<= 50 KB",
        note=f"gunicorn workers' RSS {rss_before / 1024:.0f} MB -> {rss_with / 1024:.0f} MB",
    )
    fig.met = per_stream_kb <= 50
    ctx.add(fig)
    pg_idle = 100 * idle_cpu["postgres"] / IDLE_SECONDS
    ctx.add(
        Figure(
            f"{name}_idle_cpu_percent",
            100 * idle_cpu["gunicorn"] / IDLE_SECONDS,
            "%",
            note=f"gunicorn workers' CPU (of one core) while the streams were idle for {IDLE_SECONDS:g} s "
            f"(heartbeats, resyncs, lease renewals); PostgreSQL {pg_idle:.1f} %",
        )
    )
