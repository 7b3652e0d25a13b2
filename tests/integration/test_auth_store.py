"""API keys and the rate limiter against real PostgreSQL and Redis."""

from __future__ import annotations

import secrets

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
