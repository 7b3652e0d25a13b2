"""WebhookService: manage a tenant's endpoints, run a dispatcher pass, make one attempt.

Built per process from the ExecutionService's session factory and settings (`build_webhooks`);
the API calls the management methods, the Celery tasks in workers/webhooks.py call
`dispatch_pass` and `send`. Nothing here imports Flask or Celery.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import structlog
from sqlalchemy.orm import Session, sessionmaker

from app import outbound
from app.config import Settings
from app.errors import ConflictError, WebhookNotFoundError, WebhookUrlRefusedError
from app.execution.event_emitter import event_message
from app.models import Webhook, WebhookDelivery
from app.outbound import AllowList, OutboundRefused, Resolver
from app.schemas import Pagination
from app.webhooks.schemas import WebhookCreate, WebhookUpdate
from app.webhooks.store import WebhookStore

log = structlog.get_logger(__name__)
CLAIMS_PER_PASS = 500


def retry_delay(attempts: int, base: float, jitter: float = 0.0) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base, 2 x base, 4 x base...
    stretched by up to `jitter` (a fraction) so that retries after an outage spread out."""
    return float(base * 2 ** max(attempts - 1, 0) * (1 + jitter))


def event_body(event: Any) -> bytes:
    """The POSTed body: the event as published and served over SSE, compact JSON."""
    return json.dumps(event_message(event), separators=(",", ":"), default=str).encode()


class WebhookService:
    """Endpoints of tenants and the delivery of their events."""

    def __init__(
        self,
        store: WebhookStore,
        settings: Settings,
        *,
        resolver: Resolver = outbound.system_resolver,
        client_factory: Callable[[], httpx.Client] | None = None,
    ):
        self.store = store
        self.settings = settings
        self.resolver = resolver
        self.client_factory = client_factory

    @property
    def allow(self) -> AllowList:
        """WEBHOOK_ALLOWED_HOSTS: non-public addresses that may be called anyway."""
        return AllowList.parse(self.settings.webhook_allowed_hosts)

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds a delivery: longer than an attempt can take (2 x the timeout)."""
        return 3 * self.settings.webhook_timeout_seconds

    def _check(self, url: str) -> None:
        try:
            outbound.check_url(url, self.allow, self.resolver)
        except OutboundRefused as exc:
            raise WebhookUrlRefusedError(str(exc)) from exc

    # -- management (the API)

    def create(self, data: WebhookCreate, *, tenant: str) -> Webhook:
        """A new endpoint with a fresh secret (the only answer that shows it); 422 for a URL the
        guard refuses, 409 when the tenant has WEBHOOK_MAX_PER_TENANT already."""
        self._check(data.url)
        row = Webhook(
            id=uuid.uuid4(),
            tenant=tenant,
            url=data.url,
            events=list(data.events),
            description=data.description,
            secret=outbound.new_secret(),
        )
        made = self.store.create(row, max_per_tenant=self.settings.webhook_max_per_tenant)
        if made is None:
            raise ConflictError(
                f"this tenant has {self.settings.webhook_max_per_tenant} webhooks already "
                "(WEBHOOK_MAX_PER_TENANT); delete one first"
            )
        return made

    def get(self, webhook_id: uuid.UUID, *, tenant: str) -> Webhook:
        """The tenant's endpoint (WebhookNotFoundError for another tenant's)."""
        row = self.store.get(webhook_id, tenant)
        if row is None:
            raise WebhookNotFoundError("webhook", webhook_id)
        return row

    def list_page(self, page: Pagination, *, tenant: str) -> tuple[list[Webhook], int]:
        """A page of the tenant's endpoints, newest first."""
        return self.store.list_page(tenant, page)

    def update(self, webhook_id: uuid.UUID, data: WebhookUpdate, *, tenant: str) -> Webhook:
        """Change url, events, description or enabled; enabling resets the failure streak."""
        given = data.model_dump(exclude_unset=True).items()
        changes: dict[str, Any] = {k: v for k, v in given if v is not None or k == "description"}
        if "url" in changes:
            self._check(changes["url"])
        if changes.get("enabled") is True:
            changes |= {"consecutive_failures": 0, "disabled_reason": None}
        elif changes.get("enabled") is False:
            changes["disabled_reason"] = "disabled by the API"
        if not changes:
            return self.get(webhook_id, tenant=tenant)
        row = self.store.update(webhook_id, tenant, changes)
        if row is None:
            raise WebhookNotFoundError("webhook", webhook_id)
        return row

    def delete(self, webhook_id: uuid.UUID, *, tenant: str) -> None:
        """Delete the endpoint and its deliveries (pending ones are never sent)."""
        if not self.store.delete(webhook_id, tenant):
            raise WebhookNotFoundError("webhook", webhook_id)

    def deliveries(
        self, webhook_id: uuid.UUID, page: Pagination, *, tenant: str
    ) -> tuple[list[WebhookDelivery], int]:
        """A page of the endpoint's deliveries, newest first."""
        self.get(webhook_id, tenant=tenant)
        return self.store.deliveries(webhook_id, page)

    def redeliver(self, webhook_id: uuid.UUID, delivery_id: uuid.UUID, *, tenant: str) -> WebhookDelivery:
        """Send a delivery again (due now, a fresh retry window); 409 while an attempt is in flight."""
        self.get(webhook_id, tenant=tenant)
        row = self.store.redeliver(webhook_id, delivery_id)
        if row is None:
            raise WebhookNotFoundError("delivery", delivery_id)
        if row.status == "delivering":
            raise ConflictError(f"delivery {delivery_id} is being attempted right now")
        return row

    # -- delivery (the Celery tasks)

    def dispatch_pass(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Fan the new events out, then claim what is due: the (delivery id, lease token) pairs
        for which the caller sends one send task each."""
        self.store.fan_out()
        return self.store.claim_due(
            CLAIMS_PER_PASS,
            self.lease_seconds,
            total=self.settings.webhook_max_in_flight,
            per_endpoint=self.settings.webhook_max_in_flight_per_endpoint,
        )

    def send(self, delivery_id: uuid.UUID, token: uuid.UUID) -> str:
        """Make one attempt of a claimed delivery and record it; what happened, in a word."""
        job = self.store.start_send(delivery_id, token, self.lease_seconds)
        if job is None:
            return "not-ours"  # a newer claim took it over (or it is gone)
        if not job.enabled:
            self.store.release(delivery_id, token)
            return "endpoint-disabled"
        body = event_body(job.event)
        headers = outbound.signed_headers(job.secret, str(delivery_id), body)
        code: int | None = None
        try:
            target = outbound.check_url(job.url, self.allow, self.resolver)
            answer = outbound.post(
                target,
                body,
                headers,
                timeout=self.settings.webhook_timeout_seconds,
                max_response_bytes=self.settings.webhook_max_response_bytes,
                client=self.client_factory() if self.client_factory else None,
            )
            code = answer.status_code
            if answer.ok:
                self.store.record_success(delivery_id, token, code)
                return "succeeded"
            error = f"HTTP {code}"
        except OutboundRefused as exc:
            error = f"refused: {exc}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        delay = retry_delay(job.attempts + 1, self.settings.webhook_retry_base, random.uniform(0, 0.1))
        outcome = self.store.record_failure(
            delivery_id,
            token,
            status_code=code,
            error=error,
            delay=delay,
            window=self.settings.webhook_retry_window,
            disable_after=self.settings.webhook_disable_after,
        )
        if outcome is None:
            return "not-ours"
        status, enabled = outcome
        if enabled is False:
            log.warning("webhook disabled: consecutive failed deliveries", webhook_id=str(job.webhook_id))
        return status


def build_webhooks(session_factory: sessionmaker[Session], settings: Settings) -> WebhookService:
    """The WebhookService of one process (API or worker)."""
    return WebhookService(WebhookStore(session_factory), settings)
