"""EventBus: Redis pub/sub transport for execution events, and the event type names.

Events are durable rows in `execution_events`; this module only carries them. A
publish failure is logged and swallowed (the row stays in the log), and after one
failure publishing is skipped for a short while so that a dead Redis never slows
down state transitions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
import structlog

log = structlog.get_logger(__name__)

STATE_CHANGED = "agent.execution.state_changed"
PROGRESS = "agent.execution.progress"
COMPLETED = "agent.execution.completed"
EVENT_TYPES = (STATE_CHANGED, PROGRESS, COMPLETED)
EXECUTION_CHANNEL_PREFIX = "agent.execution.events."
MAX_CONNECTIONS = 10_000  # one per thread at most; redis-py's default (100) raises beyond it


def execution_channel(execution_id: Any) -> str:
    """The per-execution channel carrying every event of one execution."""
    return f"{EXECUTION_CHANNEL_PREFIX}{execution_id}"


class EventBus:
    """Publishes event messages on Redis channels and opens subscriptions."""

    def __init__(
        self, redis_url: str, *, socket_timeout: float = 1.0, backoff_seconds: float = 1.0
    ):
        self._url = redis_url
        self._socket_timeout = socket_timeout
        self._backoff = backoff_seconds
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    @property
    def client(self) -> redis.Redis:
        """The lazily created Redis client (a connection pool, safe across threads)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = redis.Redis.from_url(
                        self._url,
                        socket_timeout=self._socket_timeout,
                        socket_connect_timeout=self._socket_timeout,
                        health_check_interval=30,
                        # redis-py 8 caps a pool at 100 connections and then FAILS the call:
                        # a worker with 200 threads publishing at once would drop events.
                        max_connections=MAX_CONNECTIONS,
                    )
        return self._client

    def publish_many(self, messages: Iterable[tuple[str, dict[str, Any]]]) -> bool:
        """Publish several messages in one round trip; False (and logged) when Redis failed."""
        batch = list(messages)
        if not batch:
            return True
        if time.monotonic() < self._down_until:
            return False
        try:
            pipe = self.client.pipeline(transaction=False)
            for event_type, message in batch:
                data = json.dumps(message, default=str)
                pipe.publish(event_type, data)
                pipe.publish(execution_channel(message["execution_id"]), data)
            pipe.execute()
            return True
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + self._backoff
            log.warning(
                "event publish failed; events stay in the log",
                error=str(exc),
                event_ids=[m.get("id") for _, m in batch],
            )
            return False

    def pubsub(self) -> redis.client.PubSub:
        """A new pub/sub connection (callers subscribe and close it)."""
        return self.client.pubsub(ignore_subscribe_messages=True)

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False
