"""A per-key rate limit in Redis: a fixed window (a minute by default) per key, shared by all processes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may pass, and when the caller may try again."""

    allowed: bool
    remaining: int
    retry_after: int


class RateLimiter:
    """`limit` requests per `window` seconds per key; fails open (logged) when Redis is unreachable."""

    def __init__(self, client: redis.Redis, limit: int, prefix: str = "agentexec:rate:", window: int = 60):
        self.client = client
        self.limit = limit
        self.prefix = prefix
        self.window = max(1, window)
        # INCR and EXPIRE in one round trip (a script: redis-py's pipelines cost more CPU).
        self._count = client.register_script(
            "local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[1]) return n"
        )

    def hit(self, key_id: str) -> RateDecision:
        """Count one request of `key_id` in the current window."""
        if self.limit <= 0:
            return RateDecision(True, 0, 0)
        now = time.time()
        window = int(now // self.window)
        name = f"{self.prefix}{key_id}:{window}"
        try:
            count = int(self._count(keys=[name], args=[self.window + 1]))
        except redis.RedisError as exc:
            log.warning("rate limiter unavailable; letting the request through", error=str(exc))
            return RateDecision(True, self.limit, 0)
        retry_after = max(1, int(self.window - (now % self.window)) + 1)
        return RateDecision(count <= self.limit, max(0, self.limit - count), retry_after)
