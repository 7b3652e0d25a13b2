"""Event committed -> received by an SSE client, against raw Redis PUBLISH -> subscriber.

This process drives one execution through its states and many progress updates (no
worker: the transitions are made here, so each commit time is known exactly: the
EventBus records the time when the state manager hands it the committed events, right
after the commit). The SSE client is a separate process reading
GET /v1/executions/{id}/events through gunicorn (Procfile web line) with an API key; it
prints each event id with the time its frame arrived. The baseline is a separate
process subscribed to a Redis channel, receiving messages published at the same pace.
"""

from __future__ import annotations

import queue as queue_mod
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from bench.common import Ctx, make_agent
from bench.env import ROOT, RUN_ID, redis_url
from bench.results import Figure, percentile

PACE = 0.005  # seconds between events, both sides


def _timing_bus() -> Any:
    from app.events import EventBus

    class TimingBus(EventBus):
        """Records when each committed event is handed over for publishing."""

        committed: dict[int, float] = {}

        def publish_many(self, messages: Iterable[tuple[str, dict[str, Any]]]) -> bool:
            batch = list(messages)
            now = time.time()
            for _, message in batch:
                self.committed[int(message["id"])] = now
            return super().publish_many(batch)

    return TimingBus(redis_url())


class _Reader:
    """Reads a listener process's lines on a thread."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue_mod.Queue[str] = queue_mod.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def wait_ready(self, timeout: float = 30) -> None:
        line = self.lines.get(timeout=timeout)
        if line != "READY":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"listener did not start: {line} {err[-500:]}")

    def results(self, timeout: float = 60) -> dict[str, float]:
        """Event id -> receive time, until the listener ends."""
        got: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if line in ("END", "EOF"):
                break
            ident, _, at = line.partition(" ")
            got[ident] = float(at)
        self.proc.wait(10)
        return got

    def close(self) -> None:
        """Kill the listener if it is still running (on errors)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def ours(ctx: Ctx, url: str, key: str, n: int) -> list[float]:
    """Latencies (ms) of n progress events and the final transitions, over SSE."""
    from app.bootstrap import build_service
    from app.schemas import ExecutionCreate, ExecutionProgressUpdate
    from app.schemas import ExecutionState as S

    bus = _timing_bus()
    svc = build_service(background_tasks=None, event_bus=bus)
    agent = make_agent(svc, "sse")
    ex, _ = svc.create_execution(ExecutionCreate(agent_id=agent.id, parameters={"input": "x"}, start=False))
    reader = _Reader(
        [
            sys.executable,
            "-m",
            "bench.listener",
            "sse",
            "--url",
            f"{url}/v1/executions/{ex.id}/events",
            "--header",
            f"Authorization: Bearer {key}",
        ]
    )
    try:
        reader.wait_ready()
        time.sleep(0.2)  # the stream has replayed the log and waits live
        first = max(bus.committed, default=0)
        svc.start_execution(ex.id)
        svc.state_manager.change_state(ex.id, S.RUNNING, "bench", expected_state=S.QUEUED)
        for i in range(n):
            svc.progress_tracker.update_progress(
                ex.id, ExecutionProgressUpdate(percentage=round(90 * i / n, 3), message=f"chunk {i}")
            )
            time.sleep(PACE)
        svc.state_manager.change_state(ex.id, S.COMPLETED, "bench", values={"result": {"output": "done"}})
        received = reader.results()
    finally:
        reader.close()
    sent = {i: t for i, t in bus.committed.items() if i > first}
    missing = [i for i in sent if str(i) not in received]
    if missing:
        raise RuntimeError(f"{len(missing)} events never reached the SSE client (first: {missing[:5]})")
    if svc.control_hub is not None:
        svc.control_hub.stop()
    return [(received[str(i)] - t) * 1000 for i, t in sent.items()]


def raw(n: int, *, pace: float = PACE, name: str = "sse") -> list[float]:
    """Latencies (ms) of n Redis messages published every `pace` s to a subscriber process: the
    raw pub/sub baseline of the SSE figures (this one's and bench/figures/deltas.py's)."""
    import redis

    channel = f"bench-{name}-raw-{RUN_ID}"
    reader = _Reader(
        [sys.executable, "-m", "bench.listener", "redis", "--url", redis_url(), "--channel", channel]
    )
    client = redis.Redis.from_url(redis_url())
    sent: dict[str, float] = {}
    try:
        reader.wait_ready()
        for i in range(n):
            sent[str(i)] = time.time()
            client.publish(channel, f"{i} {sent[str(i)]:.6f}")
            time.sleep(pace)
        client.publish(channel, "END")
        received = reader.results()
    finally:
        reader.close()
        client.close()
    return [(received[i] - t) * 1000 for i, t in sent.items() if i in received]


def run(ctx: Ctx) -> None:
    """p50 and p99 of both; the goal is on our p99."""
    from bench.common import service

    key = ctx.state.get("api_key")
    if key is None:
        key, _ = service().keys.create("default", "bench-sse")
    web = ctx.env.start_web("web-sse", env={"AUTH_ENABLED": "true", "RATE_LIMIT": "1000000000"})
    n = ctx.sizes["sse_events"]
    try:
        base = raw(n)
        mine = ours(ctx, web.info["url"], key, n)
    finally:
        ctx.env.stop(web)
    ctx.add(
        Figure(
            "sse_event_latency_p50_ms",
            percentile(mine, 50),
            "ms",
            baseline=percentile(base, 50),
            note=f"{len(mine)} events (progress updates every {PACE * 1000:g} ms, then COMPLETED) "
            f"from commit to the SSE client process; baseline {len(base)} raw Redis messages",
        )
    )
    fig = Figure(
        "sse_event_latency_p99_ms", percentile(mine, 99), "ms", baseline=percentile(base, 99), goal="<= 50 ms"
    )
    fig.met = fig.value <= 50
    ctx.add(fig)
