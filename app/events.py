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
REQUIRES_ACTION = "agent.execution.requires_action"  # an agent waits for tool outputs
EVENT_TYPES = (STATE_CHANGED, PROGRESS, COMPLETED, REQUIRES_ACTION)
# Not a logged row: kept in a capped Redis stream per execution (app/deltas.py).
OUTPUT_DELTA = "agent.execution.output.delta"
EXECUTION_CHANNEL_PREFIX = "agent.execution.events."
MAX_CONNECTIONS = 10_000
# ARGV: seconds, then channel, message, channel, message, ...; KEYS: delta keys of executions
# that ended in this batch, kept that many seconds from now (app/deltas.py).
_PUBLISH_ALL = """
for i = 2, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
"""  # one per thread at most; redis-py's default (100) raises beyond it
DELTA_KEY_PREFIX = "agentexec:deltas:"  # + execution id: its output deltas; + ":meta": their fence


def execution_channel(execution_id: Any) -> str:
    """The per-execution channel carrying every event of one execution."""
    return f"{EXECUTION_CHANNEL_PREFIX}{execution_id}"


class EventBus:
    """Publishes event messages on Redis channels and opens subscriptions."""

    def __init__(self, redis_url: str, *, socket_timeout: float = 1.0, backoff_seconds: float = 1.0):
        self._url = redis_url
        self._socket_timeout = socket_timeout
        self._backoff = backoff_seconds
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._script: Any = None
        # Execution id -> the newest event id published by this process, for the executions a
        # run here streams output for (app/execution/output.py places its deltas after it).
        self._watched: dict[str, int] = {}
        # The watched executions whose `completed` event this process published (with the
        # EXPIRE of their delta keys): their retention clock was restarted by that publish.
        self._ended: set[str] = set()
        # Set by app.deltas.DeltaLog: an execution's deltas are kept this long after its end.
        self.delta_retention_seconds = 0

    @property
    def _publish_script(self) -> Any:
        """PUBLISH every (channel, message) pair of ARGV in one round trip. A script, not a
        pipeline: redis-py builds a new Pipeline object (with a copy of ~170 response
        callbacks) for every pipeline, which cost more CPU than the publishes."""
        if self._script is None:
            self._script = self.client.register_script(_PUBLISH_ALL)
        return self._script

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
        if self._watched:
            for _, message in batch:
                key = str(message["execution_id"])
                if key in self._watched:
                    self._watched[key] = max(self._watched[key], int(message.get("id") or 0))
        if time.monotonic() < self._down_until:
            return False
        args: list[Any] = [self.delta_retention_seconds]
        keys: list[str] = []
        ended: list[str] = []
        for event_type, message in batch:
            data = json.dumps(message, default=str)
            args += [event_type, data, execution_channel(message["execution_id"]), data]
            if event_type == COMPLETED and self.delta_retention_seconds:
                key = f"{DELTA_KEY_PREFIX}{message['execution_id']}"
                keys += [key, f"{key}:meta"]
                ended.append(str(message["execution_id"]))
        try:
            self._publish_script(keys=keys, args=args)
            if self._watched:
                self._ended.update(e for e in ended if e in self._watched)
            return True
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + self._backoff
            log.warning(
                "event publish failed; events stay in the log",
                error=str(exc),
                event_ids=[m.get("id") for _, m in batch],
            )
            return False

    def watch(self, execution_id: Any) -> None:
        """Start noting the newest event id this process publishes for the execution."""
        self._watched.setdefault(str(execution_id), 0)

    def unwatch(self, execution_id: Any) -> None:
        """Stop noting it."""
        self._watched.pop(str(execution_id), None)
        self._ended.discard(str(execution_id))

    def newest_published(self, execution_id: Any) -> int:
        """The newest event id of a watched execution published here since the watch began (0: none)."""
        return self._watched.get(str(execution_id), 0)

    def retention_restarted(self, execution_id: Any) -> bool:
        """True when this process published the watched execution's `completed` event since the
        watch began: that publish restarted its deltas' retention clock (no `keep` needed)."""
        return str(execution_id) in self._ended

    def pubsub(self) -> redis.client.PubSub:
        """A new pub/sub connection (callers subscribe and close it)."""
        pubsub: redis.client.PubSub = self.client.pubsub(ignore_subscribe_messages=True)
        return pubsub

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False
