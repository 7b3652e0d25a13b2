"""Who is looking at the console: a signed session cookie holding an API key's id (never the key),
its tenant and a CSRF token; the key is re-checked against the store on every request, so a
revoked key ends its sessions at the next request.

The cookie is signed with CONSOLE_SECRET_KEY. When that is empty, one random secret per
deployment is made once and kept in Redis (`SET NX`), so every web process and host signs
alike and sessions survive restarts; while Redis cannot be reached, a process falls back to a
random secret of its own (its sessions then end when it restarts or on another process).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
import structlog
from flask import Flask, Request, abort, current_app, g, request, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from app.auth import ApiKeyStore
from app.config import Settings
from app.models import DEFAULT_TENANT

log = structlog.get_logger(__name__)
PREFIX = "/console"
SECRET_REDIS_KEY = "agentexec:console:secret"
KEY_CHECK_SECONDS = 5.0  # how often an open event stream checks that its key is not revoked
COOKIE = {
    "SESSION_COOKIE_NAME": "agentexec_console",
    "SESSION_COOKIE_PATH": PREFIX,
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Strict",
}


def _deployment_secret(redis_url: str) -> str:
    """The console secret shared by every process of the deployment (made once, kept in Redis)."""
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            client.set(SECRET_REDIS_KEY, secrets.token_urlsafe(48), nx=True)
            value = client.get(SECRET_REDIS_KEY)
        finally:
            client.close()
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
    except (redis.RedisError, OSError) as exc:
        log.warning("console sessions use a per-process secret: Redis unavailable", error=str(exc))
    return secrets.token_urlsafe(48)


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, only under /console, with a secret resolved on first use."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._secret: str | None = settings.console_secret_key or None
        self._lock = threading.Lock()

    def secret(self) -> str:
        if self._secret is None:
            with self._lock:
                if self._secret is None:
                    self._secret = _deployment_secret(self._settings.redis_url)
        return self._secret

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        return URLSafeTimedSerializer(
            self.secret(),
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
        )

    def open_session(self, app: Flask, request: Request) -> Any:
        if not request.path.startswith(PREFIX):
            return self.null_session_class()  # no cookie, no secret, no Redis outside the console
        return super().open_session(app, request)


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def check_csrf() -> None:
    """Refuse (400) a changing request whose form lacks this session's CSRF token."""
    sent = request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), str(expected).encode()):
        abort(400, description="the form's CSRF token is missing or stale: reload the page and try again")


def _store() -> ApiKeyStore:
    store: ApiKeyStore = current_app.extensions["agentexec.keys"]
    return store


def sign_in(key: str) -> bool:
    """Check a plaintext key and, when valid, start a session holding its id and tenant."""
    principal = _store().verify(key.strip())
    if principal is None:
        return False
    csrf = secrets.token_urlsafe(32)  # a new token on sign-in: no token from before carries over
    session.clear()
    session.update({"key_id": str(principal.key_id), "tenant": principal.tenant, "csrf": csrf})
    return True


def sign_out() -> None:
    """End the session."""
    session.clear()


def signed_in_key() -> uuid.UUID | None:
    """The session's key id when that key still exists and is not revoked (else the session ends)."""
    raw, tenant = session.get("key_id"), session.get("tenant")
    if not raw or not tenant:
        return None
    try:
        key_id = uuid.UUID(str(raw))
    except ValueError:
        session.clear()
        return None
    if not _key_is_live(_store(), key_id, str(tenant)):
        session.clear()
        return None
    return key_id


def _key_is_live(store: ApiKeyStore, key_id: uuid.UUID, tenant: str) -> bool:
    return any(k.id == key_id and k.revoked_at is None for k in store.list(tenant))


def while_key_lives(frames: Iterator[str], key_id: uuid.UUID, tenant: str) -> Iterator[str]:
    """Relay an event stream until its key is revoked (checked every KEY_CHECK_SECONDS, between
    frames: the stream writes at least a heartbeat every SSE_HEARTBEAT_SECONDS)."""
    return _relay(frames, _store(), key_id, tenant)  # the store is looked up now, in the request


def _relay(frames: Iterator[str], store: ApiKeyStore, key_id: uuid.UUID, tenant: str) -> Iterator[str]:
    checked = time.monotonic()
    try:
        for frame in frames:
            yield frame
            if time.monotonic() - checked >= KEY_CHECK_SECONDS:
                checked = time.monotonic()
                if not _key_is_live(store, key_id, tenant):
                    return
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()  # releases the stream's Redis subscription now


def authenticate(auth_enabled: bool) -> bool:
    """Set g.tenant for this console request; False when a sign-in is needed."""
    if not auth_enabled:
        g.tenant = DEFAULT_TENANT
        return True
    key_id = signed_in_key()
    if key_id is None:
        return False
    g.tenant = session["tenant"]
    g.key_id = key_id
    return True
