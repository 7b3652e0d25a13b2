"""What the figures share: the run context, sizes per mode, the in-process service, an event watcher."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.env import BenchEnv
from bench.results import Figure, Report

SIZES: dict[str, dict[str, Any]] = {
    "short": {
        "roundtrip_executions": 20,
        "throughput_raw": 1500,
        "throughput_ours": 600,
        "throughput_rounds": 1,
        "producers": 16,
        "http_duration": 6.0,
        "http_warmup": 1.5,
        "http_rounds": 1,
        "http_connections": 64,
        "latency_samples": 40,
        "cancel_samples": 15,
        "sse_events": 300,
        "inflight": 400,
        "inflight_concurrency": 200,
        "list_rows": 100_000,
        "list_queries": 30,
    },
    "full": {
        "roundtrip_executions": 100,
        "throughput_raw": 5000,
        "throughput_ours": 2000,
        "throughput_rounds": 3,
        "producers": 16,
        "http_duration": 15.0,
        "http_warmup": 3.0,
        "http_rounds": 3,
        "http_connections": 64,
        "latency_samples": 300,
        "cancel_samples": 100,
        "sse_events": 2000,
        "inflight": 1000,
        "inflight_concurrency": 200,
        "list_rows": 1_000_000,
        "list_queries": 200,
    },
}


@dataclass
class Ctx:
    """One benchmark run: its environment, report, mode and sizes."""

    env: BenchEnv
    report: Report
    mode: str
    sizes: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        """Print and record a figure."""
        return self.report.add(figure)


def service() -> Any:
    """The bench process's ExecutionService, sending real Celery tasks (as the API does)."""
    from workers.tasks import get_service

    return get_service()


def make_agent(svc: Any, name: str) -> Any:
    """A fresh agent with a unique name."""
    from app.schemas import AgentCreate

    return svc.create_agent(AgentCreate(name=f"{name}-{uuid.uuid4().hex[:8]}", system_prompt="Be brief."))


def create_request(agent_id: uuid.UUID, latency_ms: int = 0, chunks: int = 10, **extra: Any) -> Any:
    """An ExecutionCreate of a standard task on the simulated model."""
    from app.schemas import ExecutionCreate

    return ExecutionCreate(
        agent_id=agent_id,
        parameters={
            "type": "standard",
            "input": "benchmark input",
            "simulate": {"latency_ms": latency_ms, "chunks": chunks},
        },
        **extra,
    )


def count_in_state(svc: Any, agent_id: uuid.UUID, states: tuple[str, ...]) -> int:
    """How many executions of the agent are in one of `states`."""
    from sqlalchemy import func, select

    from app.models import Execution

    with svc.repository.session_factory() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(Execution)
                .where(Execution.agent_id == agent_id, Execution.state.in_(states))
            )
            or 0
        )


def wait_until(predicate: Any, timeout: float, interval: float = 0.01, what: str = "condition") -> float:
    """Poll until `predicate()` is truthy; the time.monotonic() at which it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class StateWatcher:
    """Subscribes to state_changed events; records when each (execution, new_state) arrived."""

    def __init__(self, redis_url: str):
        import redis

        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe("agent.execution.state_changed")
        self.seen: dict[tuple[str, str], float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._pubsub.get_message(timeout=0.2)
            if not msg or msg.get("type") != "message":
                continue
            now = time.time()
            data = json.loads(msg["data"])
            key = (data["execution_id"], data["payload"]["new_state"])
            with self._cond:
                self.seen.setdefault(key, now)
                self._cond.notify_all()

    def wait(self, execution_id: uuid.UUID, state: str, timeout: float = 30.0) -> float:
        """The time.time() at which the event arrived (waits for it)."""
        key = (str(execution_id), state)
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {state} event for {execution_id} within {timeout} s")
                self._cond.wait(left)
            return self.seen[key]

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()
