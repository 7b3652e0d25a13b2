"""`client.webhooks` of both clients: endpoints called with the tenant's events, and their deliveries.

The models mirror the API's WebhookOut, WebhookCreated, DeliveryOut and their pages (the
drift test compares them with /openapi.json). The secret is only in the create answer.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx

from agentexec_client._calls import Pager
from agentexec_client._core import Call, path_id
from agentexec_client.models import Model, RequestModel

if TYPE_CHECKING:
    from agentexec_client.async_client import AsyncClient
    from agentexec_client.client import Client

WEBHOOKS = "/v1/webhooks"
DeliveryStatus = Literal["pending", "delivering", "succeeded", "failed"]


class Webhook(Model):
    """An endpoint: where the tenant's events of `events` are POSTed, and whether it is enabled."""

    SCHEMA = "WebhookOut"
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime


class WebhookCreated(Webhook):
    """The create answer: the endpoint and its signing secret (`whsec_...`), shown this once."""

    SCHEMA = "WebhookCreated"
    secret: str


class WebhookPage(Model):
    """A page of endpoints, newest first."""

    SCHEMA = "WebhookPage"
    items: list[Webhook]
    total: int
    page: int
    page_size: int


class WebhookDelivery(Model):
    """One event for one endpoint; `id` is the `webhook-id` every attempt carries."""

    SCHEMA = "DeliveryOut"
    id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: int
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(Model):
    """A page of deliveries, newest first."""

    SCHEMA = "DeliveryPage"
    items: list[WebhookDelivery]
    total: int
    page: int
    page_size: int


class WebhookCreate(RequestModel):
    """POST /v1/webhooks."""

    SCHEMA = "WebhookCreateBody"
    url: str
    events: list[str] | None = None
    description: str | None = None


class WebhookUpdate(RequestModel):
    """PATCH /v1/webhooks/{id}."""

    SCHEMA = "WebhookUpdateBody"
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None


WebhookRef = str | uuid.UUID | Webhook
DeliveryRef = str | uuid.UUID | WebhookDelivery


def _parse(model: type[Any]) -> Any:
    return lambda response: model.model_validate(response.json())


def _nothing(response: httpx.Response) -> None:
    return None


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def create_call(url: str, events: Iterable[str] | None, description: str | None) -> Call[WebhookCreated]:
    """POST /v1/webhooks (not retried: a lost answer may hide a created endpoint and its secret)."""
    body = WebhookCreate(
        **_given(url=url, events=None if events is None else list(events), description=description)
    )
    return Call("POST", WEBHOOKS, _parse(WebhookCreated), json=body.body())


def get_call(webhook: WebhookRef) -> Call[Webhook]:
    """GET /v1/webhooks/{id}."""
    return Call("GET", f"{WEBHOOKS}/{path_id(webhook)}", _parse(Webhook), reconnectable=True)


def page_call(page: int, page_size: int) -> Call[WebhookPage]:
    """GET /v1/webhooks: one page, newest first."""
    params = {"page": page, "page_size": page_size}
    return Call("GET", WEBHOOKS, _parse(WebhookPage), params, reconnectable=True)


def update_call(webhook: WebhookRef, **fields: Any) -> Call[Webhook]:
    """PATCH /v1/webhooks/{id}: the fields not None."""
    body = WebhookUpdate(**_given(**fields)).body()
    return Call("PATCH", f"{WEBHOOKS}/{path_id(webhook)}", _parse(Webhook), json=body)


def delete_call(webhook: WebhookRef) -> Call[None]:
    """DELETE /v1/webhooks/{id}."""
    return Call("DELETE", f"{WEBHOOKS}/{path_id(webhook)}", _nothing)


def deliveries_call(webhook: WebhookRef, page: int, page_size: int) -> Call[DeliveryPage]:
    """GET /v1/webhooks/{id}/deliveries: one page, newest first."""
    params = {"page": page, "page_size": page_size}
    path = f"{WEBHOOKS}/{path_id(webhook)}/deliveries"
    return Call("GET", path, _parse(DeliveryPage), params, reconnectable=True)


def redeliver_call(webhook: WebhookRef, delivery: DeliveryRef) -> Call[WebhookDelivery]:
    """POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver."""
    path = f"{WEBHOOKS}/{path_id(webhook)}/deliveries/{path_id(delivery)}/redeliver"
    return Call("POST", path, _parse(WebhookDelivery))


class Webhooks:
    """`client.webhooks`: endpoints called back with this tenant's events."""

    def __init__(self, client: Client):
        self._c = client

    def create(
        self, url: str, *, events: Iterable[str] | None = None, description: str | None = None
    ) -> WebhookCreated:
        """Register an endpoint (events: default agent.execution.completed); keep `secret`."""
        return self._c.send(create_call(url, events, description))

    def get(self, webhook: WebhookRef) -> Webhook:
        """One endpoint."""
        return self._c.send(get_call(webhook))

    def list_page(self, page: int = 1, page_size: int = 50) -> WebhookPage:
        """One page of endpoints, newest first."""
        return self._c.send(page_call(page, page_size))

    def list(self, *, page_size: int = 200) -> Iterator[Webhook]:
        """Every endpoint, newest first."""
        pager: Pager[Webhook] = Pager(page_call, page_size)
        while not pager.done:
            yield from pager.take(self._c.send(pager.call()))

    def update(
        self,
        webhook: WebhookRef,
        *,
        url: str | None = None,
        events: Iterable[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> Webhook:
        """Change the given fields; `enabled=True` also resets consecutive_failures."""
        listed = None if events is None else builtins.list(events)
        return self._c.send(
            update_call(webhook, url=url, events=listed, description=description, enabled=enabled)
        )

    def delete(self, webhook: WebhookRef) -> None:
        """Delete an endpoint and its deliveries."""
        self._c.send(delete_call(webhook))

    def deliveries_page(self, webhook: WebhookRef, page: int = 1, page_size: int = 50) -> DeliveryPage:
        """One page of an endpoint's deliveries, newest first."""
        return self._c.send(deliveries_call(webhook, page, page_size))

    def deliveries(self, webhook: WebhookRef, *, page_size: int = 200) -> Iterator[WebhookDelivery]:
        """Every delivery of an endpoint, newest first."""
        pager: Pager[WebhookDelivery] = Pager(lambda p, s: deliveries_call(webhook, p, s), page_size)
        while not pager.done:
            yield from pager.take(self._c.send(pager.call()))

    def redeliver(self, webhook: WebhookRef, delivery: DeliveryRef) -> WebhookDelivery:
        """Send a delivery again (same webhook-id, due now)."""
        return self._c.send(redeliver_call(webhook, delivery))


class AsyncWebhooks:
    """`client.webhooks` of the AsyncClient."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(
        self, url: str, *, events: Iterable[str] | None = None, description: str | None = None
    ) -> WebhookCreated:
        """Register an endpoint (events: default agent.execution.completed); keep `secret`."""
        return await self._c.send(create_call(url, events, description))

    async def get(self, webhook: WebhookRef) -> Webhook:
        """One endpoint."""
        return await self._c.send(get_call(webhook))

    async def list_page(self, page: int = 1, page_size: int = 50) -> WebhookPage:
        """One page of endpoints, newest first."""
        return await self._c.send(page_call(page, page_size))

    async def list(self, *, page_size: int = 200) -> AsyncIterator[Webhook]:
        """Every endpoint, newest first."""
        pager: Pager[Webhook] = Pager(page_call, page_size)
        while not pager.done:
            for item in pager.take(await self._c.send(pager.call())):
                yield item

    async def update(
        self,
        webhook: WebhookRef,
        *,
        url: str | None = None,
        events: Iterable[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> Webhook:
        """Change the given fields; `enabled=True` also resets consecutive_failures."""
        listed = None if events is None else builtins.list(events)
        return await self._c.send(
            update_call(webhook, url=url, events=listed, description=description, enabled=enabled)
        )

    async def delete(self, webhook: WebhookRef) -> None:
        """Delete an endpoint and its deliveries."""
        await self._c.send(delete_call(webhook))

    async def deliveries_page(self, webhook: WebhookRef, page: int = 1, page_size: int = 50) -> DeliveryPage:
        """One page of an endpoint's deliveries, newest first."""
        return await self._c.send(deliveries_call(webhook, page, page_size))

    async def deliveries(
        self, webhook: WebhookRef, *, page_size: int = 200
    ) -> AsyncIterator[WebhookDelivery]:
        """Every delivery of an endpoint, newest first."""
        pager: Pager[WebhookDelivery] = Pager(lambda p, s: deliveries_call(webhook, p, s), page_size)
        while not pager.done:
            for item in pager.take(await self._c.send(pager.call())):
                yield item

    async def redeliver(self, webhook: WebhookRef, delivery: DeliveryRef) -> WebhookDelivery:
        """Send a delivery again (same webhook-id, due now)."""
        return await self._c.send(redeliver_call(webhook, delivery))
