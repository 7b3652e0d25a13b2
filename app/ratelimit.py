"""A per-key rate limit in Redis: a sliding window, shared by all processes, one script per request.

Each key keeps the times of its accepted requests of the last `window` seconds (a sorted
set, at most `limit` members). A request passes when fewer than `limit` were accepted in
the `window` seconds before it, so no window of that length ever holds more than `limit`
(a fixed window let twice the limit through across its edge). The clock is Redis's own
(`TIME`), so API processes on several hosts agree. Refused requests are not recorded.

When Redis is unreachable the limiter lets requests through (fails open): it logs once
when the outage starts and once when it ends, and each request let through that way is
marked `failed_open` for the caller to count.
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass

import redis
import structlog

log = structlog.get_logger(__name__)

# KEYS[1] the key's set; ARGV: window (s), limit, a unique member. Returns {allowed, remaining, retry_ms}.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1]) * 1000
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may pass, and when the caller may try again."""

    allowed: bool
    remaining: int
    retry_after: int
    failed_open: bool = False  # let through because Redis could not be asked


class RateLimiter:
    """At most `limit` requests in any `window` seconds per key; fails open when Redis is unreachable."""

    def __init__(self, client: redis.Redis, limit: int, prefix: str = "agentexec:rate:", window: int = 60):
        self.client = client
        self.limit = limit
        self.prefix = prefix
        self.window = max(1, window)
        self._script = client.register_script(_SLIDING_WINDOW)
        self._down = False
        self._lock = threading.Lock()

    def hit(self, key_id: str) -> RateDecision:
        """Count one request of `key_id`, unless the last `window` seconds already hold `limit`."""
        if self.limit <= 0:
            return RateDecision(True, 0, 0)
        try:
            allowed, remaining, retry_ms = self._script(
                keys=[f"{self.prefix}{key_id}"], args=[self.window, self.limit, uuid.uuid4().hex]
            )
        except redis.RedisError as exc:
            self._outage(True, str(exc))
            return RateDecision(True, self.limit, 0, failed_open=True)
        if self._down:
            self._outage(False, "")
        return RateDecision(bool(allowed), int(remaining), max(1, math.ceil(int(retry_ms) / 1000)))

    def _outage(self, down: bool, error: str) -> None:
        with self._lock:
            if self._down == down:
                return
            self._down = down
        if down:
            log.warning("rate limiter unavailable; letting requests through until Redis answers", error=error)
        else:
            log.info("rate limiter available again")
