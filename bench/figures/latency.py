"""Submit -> RUNNING against raw apply_async -> task body starts; cancel -> CANCELLED mid-stream.

One at a time, raw and ours alternating. Both sides are observed the same way: a Redis
message received by this process (raw: the task body publishes; ours: the committed
RUNNING transition's state_changed event).
"""

from __future__ import annotations

import queue as queue_mod
import threading
import time
from typing import Any

from bench.common import Ctx, StateWatcher, create_request, make_agent, service
from bench.env import RAW_QUEUE, RUN_ID, redis_url
from bench.results import Figure, percentile


class _RawStarts:
    """Receives the raw task's 'body started' messages."""

    def __init__(self) -> None:
        import redis

        self.channel = f"bench-started-{RUN_ID}"
        self._client = redis.Redis.from_url(redis_url())
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(self.channel)
        self.arrivals: queue_mod.Queue[float] = queue_mod.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.2)
            if msg and msg.get("type") == "message":
                self.arrivals.put(time.time())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()


def submit_to_running(ctx: Ctx, svc: Any, watcher: StateWatcher) -> None:
    """p50 and p99 of submit -> RUNNING, raw and ours, one at a time."""
    from bench.raw_celery import started

    raw = _RawStarts()
    agent = make_agent(svc, "latency")
    raw_ms: list[float] = []
    our_ms: list[float] = []
    call_ms: list[float] = []
    n = ctx.sizes["latency_samples"]
    try:
        for i in range(n + 3):
            t0 = time.time()
            started.apply_async(args=[raw.channel], queue=RAW_QUEUE)
            t1 = raw.arrivals.get(timeout=30)
            t2 = time.time()
            ex, _ = svc.create_execution(create_request(agent.id))
            t_call = time.time()
            t3 = watcher.wait(ex.id, "RUNNING")
            watcher.wait(ex.id, "COMPLETED")
            if i >= 3:  # the first few warm up connections and threads
                raw_ms.append((t1 - t0) * 1000)
                our_ms.append((t3 - t2) * 1000)
                call_ms.append((t_call - t2) * 1000)
            time.sleep(0.01)
    finally:
        raw.close()
    p50, p99 = percentile(our_ms, 50), percentile(our_ms, 99)
    b50, b99 = percentile(raw_ms, 50), percentile(raw_ms, 99)
    fig = Figure(
        "submit_to_running_p50_ms",
        p50,
        "ms",
        baseline=b50,
        goal="ratio <= 2",
        note=f"{n} samples each; ours = create_execution (one statement, publish, send_task) -> "
        f"RUNNING event; the create_execution call itself took p50 "
        f"{percentile(call_ms, 50):.1f} ms",
    )
    fig.met = fig.ratio is not None and fig.ratio <= 2
    ctx.add(fig)
    ctx.add(Figure("submit_to_running_p99_ms", p99, "ms", baseline=b99))


def cancel_latency(ctx: Ctx, svc: Any, watcher: StateWatcher, cancel: Any = None, how: str = "") -> None:
    """p50 and p99 of cancel -> CANCELLED in the middle of a streamed (simulated) model call."""
    agent = make_agent(svc, "cancel")
    cancel = cancel or (lambda eid: svc.cancel_execution(eid))
    samples: list[float] = []
    n = ctx.sizes["cancel_samples"]
    for _ in range(n):
        ex, _ = svc.create_execution(create_request(agent.id, latency_ms=30_000, chunks=300))
        watcher.wait(ex.id, "RUNNING")
        time.sleep(0.15)  # inside the model call: input prepared, streaming chunks
        t0 = time.time()
        cancel(ex.id)
        t1 = watcher.wait(ex.id, "CANCELLED", timeout=10)
        samples.append((t1 - t0) * 1000)
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    ctx.add(
        Figure(
            "cancel_to_cancelled_p50_ms",
            p50,
            "ms",
            note=f"{n} samples, cancel {how or 'through ExecutionService'} while a 30 s "
            f"streamed call runs; CANCELLED = its state_changed event received",
        )
    )
    fig = Figure("cancel_to_cancelled_p99_ms", p99, "ms", goal="<= 1000 ms")
    fig.met = p99 <= 1000
    ctx.add(fig)


def run(ctx: Ctx) -> None:
    """Both latency figures on the already running default workers."""
    svc = service()
    watcher = StateWatcher(redis_url())
    try:
        submit_to_running(ctx, svc, watcher)
        cancel_latency(ctx, svc, watcher)
    finally:
        watcher.close()
