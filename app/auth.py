"""API keys: a key belongs to a tenant, is stored only as its SHA-256 hash, and can be revoked."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from app.execution.repository import ExecutionRepository
from app.models import ApiKey

KEY_PREFIX = "agx_"
_CACHE_SECONDS = 5.0


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and its tenant."""

    key_id: uuid.UUID
    tenant: str


class ApiKeyStore:
    """Creates, verifies, lists and revokes API keys."""

    def __init__(self, repository: ExecutionRepository):
        self.repository = repository
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def create(self, tenant: str, name: str | None = None) -> tuple[str, ApiKey]:
        """A new key for `tenant`: (the plaintext, shown once; its row)."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(tenant=tenant, name=name, prefix=plaintext[:12], key_hash=hash_key(plaintext))
        return plaintext, self.repository.create_api_key(row)

    def verify(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise. Cached for a few seconds."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = self._lookup(digest)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + _CACHE_SECONDS, principal)
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        found = self.repository.find_api_key(digest)
        return None if found is None else Principal(*found)

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (or a tenant's), newest first; no hashes are shown to callers."""
        return self.repository.list_api_keys(tenant)

    def revoke(self, key_id: uuid.UUID) -> bool:
        """Revoke a key by id; False when unknown or already revoked."""
        key_hash = self.repository.revoke_api_key(key_id)
        if key_hash is not None:
            with self._lock:
                self._cache.pop(key_hash, None)
        return key_hash is not None
