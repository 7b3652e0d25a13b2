"""Who may call the API: bearer API keys, per-key rate limits, security headers and CORS.

Every /v1 route needs `Authorization: Bearer <key>` when AUTH_ENABLED (the default);
the key's tenant scopes every query the view makes (another tenant's resources are
404, never 403). /healthz, /readyz, /openapi.json and /docs stay open; /metrics is
open on loopback and needs a key from anywhere else.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from flask import Flask, Response, g, request
from flask_cors import CORS
from flask_openapi3 import OpenAPI

from api.operations import API_METRICS_KEY
from api.problems import problem
from app.config import Settings
from app.execution.service import ExecutionService
from app.metrics import ApiMetrics
from app.models import DEFAULT_TENANT

REALM = 'Bearer realm="agentexec"'
BEARER_SCHEME: dict[str, Any] = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an agentexec API key"}
}
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_API_CSP = "default-src 'none'; frame-ancestors 'none'"
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)


def _unauthorized(detail: str, error: str | None) -> Response:
    challenge = REALM if error is None else f'{REALM}, error="{error}"'
    return problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def _bearer_token() -> tuple[str | None, Response | None]:
    header = request.headers.get("Authorization")
    if not header:
        return None, _unauthorized("this route needs an API key: send 'Authorization: Bearer <key>'", None)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None, _unauthorized("the Authorization header must be 'Bearer <key>'", "invalid_request")
    return token, None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(setting: str) -> list[Network]:
    """TRUSTED_PROXIES (comma-separated addresses or CIDR networks) parsed; bad entries are an error."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in setting.split(",") if part.strip()]


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None


def is_local_client(trusted: list[Network]) -> bool:
    """True when the client (not a proxy in front of it) is on loopback.

    A forwarded request (X-Forwarded-For or Forwarded) is local only when it came through
    a trusted proxy and the right-most address not of a trusted proxy is loopback, so a
    reverse proxy on the same host never makes the world's requests look local.
    """
    peer = _address(request.remote_addr)
    forwarded = request.headers.getlist("X-Forwarded-For")
    if not forwarded and "Forwarded" not in request.headers:
        return peer is not None and peer.is_loopback
    hops = [hop for value in forwarded for hop in value.split(",") if hop.strip()]

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in net for net in trusted)

    if not is_trusted(peer):
        return False  # forwarded by a peer we do not trust: whoever it forwards is not local
    client = peer
    while hops and is_trusted(client):
        client = _address(hops.pop())
    if client is None or is_trusted(client):
        return False
    return client.is_loopback


def _check_metrics_token(expected: str) -> Response | None:
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode()):
        return None
    return _unauthorized("/metrics needs 'Authorization: Bearer <METRICS_TOKEN>'", "invalid_token")


def document_security(app: OpenAPI, enabled: bool) -> None:
    """Make the OpenAPI document say what this app enforces: without auth, no route needs a key."""
    if enabled:
        return
    app.security_schemes = {}
    for path, item in list(app.paths.items()):
        copy = item.model_copy(deep=True)  # blueprints are shared by every app of the process
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(copy, method, None)
            if operation is not None and operation.security:
                operation.security = []  # an empty list: no key needed
        app.paths[path] = copy


def init_security(app: Flask, service: ExecutionService, settings: Settings) -> None:
    """Register authentication, rate limiting, security headers and (configured) CORS."""
    store = service.keys
    limiter = service.rate_limiter
    trusted = trusted_networks(settings.trusted_proxies)
    metrics: ApiMetrics = app.extensions[API_METRICS_KEY]
    assert store is not None, "the composition root builds the key store"
    app.extensions["agentexec.keys"] = store
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        CORS(
            app,
            resources={r"/v1/*": {"origins": origins}},
            expose_headers=["Retry-After", "Location"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
        )

    @app.before_request
    def authenticate() -> Response | None:
        path = request.path
        g.tenant = DEFAULT_TENANT
        if request.method == "OPTIONS" and origins:
            return None  # CORS preflight carries no credentials
        needs_key = path.startswith("/v1/") or path == "/v1"
        if path == "/metrics":
            if settings.metrics_token:  # explicit: this token, from anywhere, and nothing else
                return _check_metrics_token(settings.metrics_token)
            needs_key = not is_local_client(trusted)
        if not needs_key or not settings.auth_enabled:
            return None
        token, refusal = _bearer_token()
        if refusal is not None:
            return refusal
        principal = store.verify(token or "")
        if principal is None:
            return _unauthorized("the API key is unknown or revoked", "invalid_token")
        g.tenant = principal.tenant
        g.key_id = principal.key_id
        if limiter is not None:
            decision = limiter.hit(str(principal.key_id))
            if decision.failed_open:
                metrics.rate_limit_failed_open.inc()
            g.rate_remaining = decision.remaining
            if not decision.allowed:
                detail = (
                    f"rate limit of {settings.rate_limit} requests per {settings.rate_limit_window} s "
                    f"reached; retry after {decision.retry_after} s"
                )
                return problem(
                    429, "Too Many Requests", detail, headers={"Retry-After": str(decision.retry_after)}
                )
        return None

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        docs = request.path.startswith("/docs")
        response.headers.setdefault("Content-Security-Policy", _DOCS_CSP if docs else _API_CSP)
        if request.path.startswith("/v1"):
            response.headers.setdefault("Cache-Control", "no-store")
            if settings.auth_enabled and settings.rate_limit > 0 and "rate_remaining" in g:
                response.headers["X-RateLimit-Limit"] = str(settings.rate_limit)
                response.headers["X-RateLimit-Remaining"] = str(g.rate_remaining)
        return response
