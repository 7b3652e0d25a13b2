"""API keys: a key belongs to a tenant, is stored only as its SHA-256 hash, and can be revoked."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.execution.repository import _wrap_db_errors
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

    def __init__(self, session_factory: sessionmaker[Session]):
        self.session_factory = session_factory
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    @_wrap_db_errors
    def create(self, tenant: str, name: str | None = None) -> tuple[str, ApiKey]:
        """A new key for `tenant`: (the plaintext, shown once; its row)."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(tenant=tenant, name=name, prefix=plaintext[:12], key_hash=hash_key(plaintext))
        with self.session_factory() as s:
            s.add(row)
            s.commit()
        return plaintext, row

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

    @_wrap_db_errors
    def _lookup(self, digest: str) -> Principal | None:
        with self.session_factory() as s:
            row = s.execute(
                select(ApiKey.id, ApiKey.tenant).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            ).one_or_none()
        return None if row is None else Principal(row.id, row.tenant)

    @_wrap_db_errors
    def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (or a tenant's), newest first; no hashes are shown to callers."""
        with self.session_factory() as s:
            stmt = select(ApiKey).order_by(ApiKey.created_at.desc())
            if tenant is not None:
                stmt = stmt.where(ApiKey.tenant == tenant)
            return list(s.scalars(stmt))

    @_wrap_db_errors
    def revoke(self, key_id: uuid.UUID) -> bool:
        """Revoke a key by id; False when unknown or already revoked."""
        with self.session_factory() as s:
            done = s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=func.now())
                .returning(ApiKey.key_hash)
            ).one_or_none()
            s.commit()
        if done is not None:
            with self._lock:
                self._cache.pop(done.key_hash, None)
        return done is not None
