"""Output delta latency: a provider yields a chunk -> the SSE client receives its delta frame,
against raw Redis PUBLISH -> subscriber at the same pace, in the same run.

This process plays the worker: it claims one execution (RUNNING, as a run would) and
feeds chunks, one every `PACE` seconds, through the runner's own path (`OutputStream`:
the coalescer, `DeltaLog.append`'s script: place, XADD, PUBLISH). A chunk's time is taken
just before the coalescer gets it; `PACE` is above the 50 ms coalescing interval, so each
chunk goes out at once and the figure is the transport, not the coalescing wait. The SSE
client is a separate process (bench.listener) reading GET /v1/executions/{id}/events
through gunicorn (Procfile web line, API key): each delta it receives went through the
web process's wake-up, the log read, the fenced delta read and the frame.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench.common import Ctx, make_agent
from bench.env import redis_url
from bench.figures.sse import _Reader, raw
from bench.results import Figure, percentile

PACE = 0.06  # seconds between chunks, both sides (> the coalescer's 50 ms: no waiting there)


def _timing_log() -> Any:
    from app.deltas import DeltaLog
    from app.events import EventBus

    class TimingLog(DeltaLog):
        """Records, per stored delta id, when the provider yielded its chunk."""

        yielded_at = 0.0
        sent: dict[str, float] = {}

        def append(self, execution_id: Any, attempt: int, floor: int, message: dict[str, Any]) -> str | None:
            ident = super().append(execution_id, attempt, floor, message)
            if ident is not None:
                self.sent[ident] = self.yielded_at
            return ident

    return TimingLog(EventBus(redis_url()), retention_seconds=600, maxlen=100_000)


def ours(url: str, key: str, n: int) -> list[float]:
    """Latencies (ms) of n chunks from the provider's yield to the SSE client process."""
    from app.bootstrap import build_service
    from app.execution.output import OutputStream
    from app.schemas import ExecutionCreate
    from app.schemas import ExecutionState as S

    svc = build_service(background_tasks=None)
    log = _timing_log()
    agent = make_agent(svc, "deltas")
    ex, _ = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}))
    execution, _ = svc.state_manager.claim(ex.id, ex.attempt, "bench", "Generate")
    reader = _Reader(
        [
            sys.executable,
            "-m",
            "bench.listener",
            "sse",
            "--url",
            f"{url}/v1/executions/{ex.id}/events?types=agent.execution.output.delta,agent.execution.completed",
            "--header",
            f"Authorization: Bearer {key}",
        ]
    )
    try:
        reader.wait_ready()
        time.sleep(0.3)  # the stream has replayed the log and waits live
        output = OutputStream(log, execution, lambda known: known)
        chunks = output.call(None)
        for i in range(n):
            log.yielded_at = time.time()
            chunks.write(f"chunk {i} of the model's answer; ")
            time.sleep(PACE)
        chunks.flush()
        svc.state_manager.change_state(ex.id, S.COMPLETED, "bench", values={"result": {"output": "done"}})
        received = reader.results()
    finally:
        reader.close()
        if svc.control_hub is not None:
            svc.control_hub.stop()
    missing = [i for i in log.sent if i not in received]
    if missing:
        raise RuntimeError(f"{len(missing)} deltas never reached the SSE client (first: {missing[:5]})")
    return [(received[i] - t) * 1000 for i, t in log.sent.items()]


def run(ctx: Ctx) -> None:
    """p50 and p99 of both, reported with the raw baseline (no goal in the issue)."""
    from bench.common import service

    key = ctx.state.get("api_key")
    if key is None:
        key, _ = service().keys.create("default", "bench-deltas")
        ctx.state["api_key"] = key
    web = ctx.env.start_web("web-deltas", env={"AUTH_ENABLED": "true", "RATE_LIMIT": "1000000000"})
    n = int(ctx.sizes.get("delta_chunks", 100 if ctx.mode == "short" else 300))
    try:
        base = raw(n, pace=PACE, name="delta")
        mine = ours(web.info["url"], key, n)
    finally:
        ctx.env.stop(web)
    note = (
        f"{len(mine)} chunks, one every {PACE * 1000:g} ms, from the provider's yield (coalescer, "
        f"delta script) to the SSE client process through gunicorn; baseline {len(base)} raw "
        "Redis messages at the same pace"
    )
    ctx.add(
        Figure(
            "output_delta_latency_p50_ms",
            percentile(mine, 50),
            "ms",
            baseline=percentile(base, 50),
            note=note,
        )
    )
    ctx.add(Figure("output_delta_latency_p99_ms", percentile(mine, 99), "ms", baseline=percentile(base, 99)))
