"""The pydantic models of /v1/webhooks: paths, bodies (the domain's, with examples) and answers.

Kept beside api/models.py rather than in it: a resource of its own with its own examples, and
api/models.py is long enough.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.webhooks.schemas import WebhookCreate, WebhookUpdate

_WEBHOOK_ID = "0b6f3c1e-8d2a-4a57-9c1e-2f4d5e6a7b8c"
_EXAMPLE_OUT: dict[str, Any] = {
    "id": _WEBHOOK_ID,
    "url": "https://hooks.example.com/agentexec",
    "events": ["agent.execution.completed"],
    "description": "billing: runs that ended",
    "enabled": True,
    "disabled_reason": None,
    "consecutive_failures": 0,
    "created_at": "2026-11-26T16:00:00Z",
    "updated_at": "2026-11-26T16:00:00Z",
}
_EXAMPLE_DELIVERY: dict[str, Any] = {
    "id": "5f0e7a9c-3b1d-4e2f-8a6b-9c0d1e2f3a4b",
    "webhook_id": _WEBHOOK_ID,
    "event_id": 4711,
    "event_type": "agent.execution.completed",
    "status": "pending",
    "attempts": 2,
    "last_status_code": 503,
    "last_error": "HTTP 503",
    "next_attempt_at": "2026-11-26T16:00:20Z",
    "created_at": "2026-11-26T16:00:00Z",
    "delivered_at": None,
}


def _examples(**named: dict[str, Any]) -> dict[str, Any]:
    """Named OpenAPI examples of a body or an answer (flask-openapi3 puts them on the media type)."""
    return {"examples": {name: {"value": value} for name, value in named.items()}}


class WebhookPath(BaseModel):
    """The webhook named in the path."""

    webhook_id: uuid.UUID


class DeliveryPath(BaseModel):
    """A delivery of the webhook named in the path."""

    webhook_id: uuid.UUID
    delivery_id: uuid.UUID


class WebhookCreateBody(WebhookCreate):
    """The body of POST /v1/webhooks."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        openapi_extra=_examples(
            default={
                "url": "https://hooks.example.com/agentexec",
                "events": ["agent.execution.completed"],
                "description": "billing: runs that ended",
            }
        )
    )


class WebhookUpdateBody(WebhookUpdate):
    """The body of PATCH /v1/webhooks/{webhook_id}: any subset of the fields."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        openapi_extra=_examples(
            enable={"enabled": True},
            events={"events": ["agent.execution.completed", "agent.execution.progress"]},
        )
    )


class WebhookOut(BaseModel):
    """A webhook endpoint (its secret is shown only by the create answer)."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        from_attributes=True, openapi_extra=_examples(default=_EXAMPLE_OUT)
    )

    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool = Field(description="false: no delivery is made (disabled by the API or after failures)")
    disabled_reason: str | None = Field(description="why it was disabled; null while enabled")
    consecutive_failures: int = Field(
        description="deliveries in a row that ended failed; WEBHOOK_DISABLE_AFTER of them disable it"
    )
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    """The create answer: the endpoint and its signing secret, shown this once."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        from_attributes=True,
        openapi_extra=_examples(default=_EXAMPLE_OUT | {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
    )

    secret: str = Field(
        description="`whsec_<base64>`: verify `webhook-signature` with it (Standard Webhooks); "
        "never shown again"
    )


class WebhookPage(BaseModel):
    """A page of the tenant's webhooks, newest first."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        openapi_extra=_examples(default={"items": [_EXAMPLE_OUT], "total": 1, "page": 1, "page_size": 50})
    )

    items: list[WebhookOut]
    total: int
    page: int
    page_size: int


class DeliveryOut(BaseModel):
    """One event for one endpoint and how its delivery went; `id` is the `webhook-id` header."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        from_attributes=True, openapi_extra=_examples(default=_EXAMPLE_DELIVERY)
    )

    id: uuid.UUID = Field(description="the `webhook-id` of every attempt (receivers deduplicate on it)")
    webhook_id: uuid.UUID
    event_id: int
    event_type: str
    status: Literal["pending", "delivering", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None = Field(description="the HTTP status of the last attempt (null: no answer)")
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="when the next attempt is due (null when done)")
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    """A page of an endpoint's deliveries, newest first."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]  # read by flask-openapi3
        openapi_extra=_examples(
            default={"items": [_EXAMPLE_DELIVERY], "total": 1, "page": 1, "page_size": 50}
        )
    )

    items: list[DeliveryOut]
    total: int
    page: int
    page_size: int
