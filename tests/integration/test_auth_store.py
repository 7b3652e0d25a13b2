"""API keys and the rate limiter against real PostgreSQL and Redis."""

from __future__ import annotations

import secrets
import time

import redis
from sqlalchemy import select

from app.auth import ApiKeyStore, hash_key
from app.execution.repository import ExecutionRepository
from app.models import ApiKey
from app.ratelimit import RateLimiter


def test_a_key_is_stored_only_as_its_hash_and_verifies_to_its_tenant(session_factory, clean_db):  # type: ignore[no-untyped-def]
    store = ApiKeyStore(ExecutionRepository(session_factory))
    plaintext, row = store.create("acme", "ci")
    with session_factory() as s:
        stored = s.scalars(select(ApiKey)).one()
    assert stored.key_hash == hash_key(plaintext) and plaintext not in (stored.key_hash, stored.prefix)
    principal = store.verify(plaintext)
    assert principal is not None and principal.tenant == "acme" and principal.key_id == row.id
    assert store.verify(plaintext + "x") is None
    assert store.verify("not-a-key") is None
    assert [k.id for k in store.list("acme")] == [row.id] and store.list("other") == []


def test_a_revoked_key_no_longer_verifies(session_factory, clean_db):  # type: ignore[no-untyped-def]
    store = ApiKeyStore(ExecutionRepository(session_factory))
    plaintext, row = store.create("acme")
    assert store.verify(plaintext) is not None
    assert store.revoke(row.id) is True
    assert store.verify(plaintext) is None
    assert store.revoke(row.id) is False


def test_the_rate_limit_refuses_past_the_limit_with_a_retry_after(settings):  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(settings.redis_url)
    limiter = RateLimiter(client, limit=3, prefix=f"agentexec:test-rate:{secrets.token_hex(4)}:")
    decisions = [limiter.hit("k1") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert 1 <= decisions[-1].retry_after <= 61
    assert limiter.hit("k2").allowed  # per key


def test_the_rate_limit_lets_requests_through_when_redis_is_down():
    client = redis.Redis(port=1, socket_connect_timeout=0.2)
    assert RateLimiter(client, limit=1).hit("k").allowed


def test_no_window_of_the_limits_length_ever_lets_more_than_the_limit_through(settings):  # type: ignore[no-untyped-def]
    """A fixed window let twice the limit through across its edge; a sliding one never does."""
    client = redis.Redis.from_url(settings.redis_url)
    limit, window = 5, 1
    limiter = RateLimiter(
        client, limit=limit, window=window, prefix=f"agentexec:test-slide:{secrets.token_hex(4)}:"
    )
    accepted: list[float] = []
    end = time.monotonic() + 2.5 * window
    while time.monotonic() < end:  # a steady stream across two window edges
        if limiter.hit("k").allowed:
            accepted.append(time.monotonic())
        time.sleep(0.01)
    assert len(accepted) >= 2 * limit  # it does let requests through again as old ones age out
    for i, t in enumerate(accepted):
        in_window = [u for u in accepted[: i + 1] if u > t - window + 0.02]  # 20 ms for clock granularity
        assert len(in_window) <= limit, (i, len(in_window))


def test_a_redis_outage_is_logged_once_and_each_request_let_through_is_marked():
    from structlog.testing import capture_logs

    limiter = RateLimiter(redis.Redis(port=1, socket_connect_timeout=0.2), limit=1)
    with capture_logs() as logs:
        decisions = [limiter.hit("k") for _ in range(3)]
    assert all(d.allowed and d.failed_open for d in decisions)
    # Only the limiter's own warnings: another component of this process (the event fan-out of an
    # earlier test's private Redis) may log its own outage meanwhile.
    warnings = [
        e["event"] for e in logs if e["log_level"] == "warning" and e["event"].startswith("rate limiter")
    ]
    assert warnings == ["rate limiter unavailable; letting requests through until Redis answers"]
