"""/v1/webhooks: a tenant's endpoints, their deliveries, and sending one again."""

from __future__ import annotations

from flask import Response, current_app
from flask_openapi3 import APIBlueprint, Tag

from api.deps import answer, service, settings, tenant
from api.models import PageQuery
from api.openapi import BODY_ERRORS, problems
from api.security import SECURITY
from api.webhook_models import (
    DeliveryOut,
    DeliveryPage,
    DeliveryPath,
    WebhookCreateBody,
    WebhookCreated,
    WebhookOut,
    WebhookPage,
    WebhookPath,
    WebhookUpdateBody,
)
from app.schemas import Pagination
from app.webhooks.service import WebhookService, build_webhooks

WEBHOOKS_KEY = "agentexec.webhooks"

bp = APIBlueprint(
    "webhooks",
    __name__,
    url_prefix="/v1/webhooks",
    abp_security=SECURITY,
    abp_tags=[
        Tag(
            name="webhooks",
            description="Endpoints called with the tenant's events, signed per Standard Webhooks",
        )
    ],
)


def webhooks() -> WebhookService:
    """The app's WebhookService, built on first use from the ExecutionService's database."""
    built: WebhookService | None = current_app.extensions.get(WEBHOOKS_KEY)
    if built is None:
        built = build_webhooks(service().repository.session_factory, settings())
        current_app.extensions.setdefault(WEBHOOKS_KEY, built)
    return built


@bp.post("", operation_id="createWebhook", responses={201: WebhookCreated, **problems(409, *BODY_ERRORS)})
def create_webhook(body: WebhookCreateBody) -> Response:
    """Create an endpoint; the answer shows its signing secret, once.

    422 for a URL that is not http(s) or that resolves to a loopback, private, link-local or
    otherwise non-public address not listed in WEBHOOK_ALLOWED_HOSTS; 409 when the tenant has
    WEBHOOK_MAX_PER_TENANT endpoints already.
    """
    row = webhooks().create(body, tenant=tenant())
    return answer(WebhookCreated.model_validate(row), 201)


@bp.get("", operation_id="listWebhooks", responses={200: WebhookPage, **problems()})
def list_webhooks(query: PageQuery) -> Response:
    """A page of this tenant's endpoints, newest first."""
    page = Pagination(page=query.page, page_size=query.page_size)
    rows, total = webhooks().list_page(page, tenant=tenant())
    items = [WebhookOut.model_validate(r) for r in rows]
    return answer(WebhookPage(items=items, total=total, page=query.page, page_size=query.page_size))


@bp.get("/<webhook_id>", operation_id="getWebhook", responses={200: WebhookOut, **problems(404)})
def get_webhook(path: WebhookPath) -> Response:
    """One endpoint: whether it is enabled, and why not."""
    return answer(WebhookOut.model_validate(webhooks().get(path.webhook_id, tenant=tenant())))


@bp.patch(
    "/<webhook_id>", operation_id="updateWebhook", responses={200: WebhookOut, **problems(404, *BODY_ERRORS)}
)
def update_webhook(path: WebhookPath, body: WebhookUpdateBody) -> Response:
    """Change the URL, the events, the description or `enabled`; enabling again resets
    `consecutive_failures` and resumes the deliveries still pending."""
    row = webhooks().update(path.webhook_id, body, tenant=tenant())
    return answer(WebhookOut.model_validate(row))


@bp.delete("/<webhook_id>", operation_id="deleteWebhook", responses={204: None, **problems(404)})
def delete_webhook(path: WebhookPath) -> Response:
    """Delete an endpoint and its deliveries; pending ones are not sent."""
    webhooks().delete(path.webhook_id, tenant=tenant())
    return Response(status=204)


@bp.get(
    "/<webhook_id>/deliveries",
    operation_id="listWebhookDeliveries",
    responses={200: DeliveryPage, **problems(404)},
)
def list_deliveries(path: WebhookPath, query: PageQuery) -> Response:
    """A page of the endpoint's deliveries, newest first: status, attempts, the last answer's
    status code and error, and when the next attempt is due."""
    page = Pagination(page=query.page, page_size=query.page_size)
    rows, total = webhooks().deliveries(path.webhook_id, page, tenant=tenant())
    items = [DeliveryOut.model_validate(r) for r in rows]
    return answer(DeliveryPage(items=items, total=total, page=query.page, page_size=query.page_size))


@bp.post(
    "/<webhook_id>/deliveries/<delivery_id>/redeliver",
    operation_id="redeliverWebhookDelivery",
    responses={202: DeliveryOut, **problems(404, 409)},
)
def redeliver(path: DeliveryPath) -> Response:
    """Send a delivery again, with the same `webhook-id`: it is due at once with a fresh retry
    window (whatever its status). 409 while an attempt of it is in flight."""
    row = webhooks().redeliver(path.webhook_id, path.delivery_id, tenant=tenant())
    return answer(DeliveryOut.model_validate(row), 202)
