"""The raw Celery baseline: the same celeryconfig (broker, acks, prefetch, events), no-op tasks.

Started by the benchmark with the Procfile's worker line and `-A bench.raw_celery`, so it
runs with the same pool and concurrency as agentexec's worker.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache

import redis
from celery import Celery

app = Celery("bench_raw")
app.config_from_object("celeryconfig")
app.conf.beat_schedule = {}
app.conf.task_default_queue = os.environ.get("BENCH_RAW_QUEUE", "bench-raw")


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"], max_connections=10_000)


@app.task(name="bench.noop", ignore_result=True)
def noop(counter: str | None = None) -> None:
    """Nothing, except counting itself done when asked (so the benchmark sees completion)."""
    if counter:
        _redis().incr(counter)


@app.task(name="bench.sleep", ignore_result=True)
def sleep(seconds: float, chunks: int, counter: str) -> None:
    """A stand-in model call: sleep in chunks (as the simulated provider streams), then count."""
    for _ in range(chunks):
        time.sleep(seconds / chunks)
    _redis().incr(counter)


@app.task(name="bench.started", ignore_result=True)
def started(channel: str) -> None:
    """Announce that the task body started (the raw 'submit -> RUNNING')."""
    _redis().publish(channel, repr(time.time()))
